"""Added latency and throughput of the cortex gateway, side by side with the LiteLLM proxy, on one machine.

A minimal fast upstream (raw asyncio HTTP/1.1, keep-alive, answers in microseconds, mimicking a neuron's
`/health`, `/models` and `/v1/chat/completions`) runs in its own process. The same load generator (httpx,
asyncio) measures it directly, through `cortex serve` and through `litellm --config` (installed in a separate
venv), for non-stream and stream (8 content chunks + usage) requests:

* latency: sequential requests, p50/p99 to the last byte; "added" = proxied minus direct at the same percentile.
  The targets take turns (`--rounds` rounds of `--requests / --rounds` requests each, the order reversed every
  other round), so load from other processes on a shared machine falls on all of them alike;
* CPU: the proxy process's CPU time (user + system) per request over those latency rounds;
* throughput: requests/s with `--concurrency` requests in flight.

A "floor" row measures the bare stack the gateway is built on: a raw ASGI app on hypercorn that forwards each
request with the same httpx client setup (no Quart, no auth, routing, metrics or SSE handling). What the
gateway adds beyond that row is its own cost.

    python scripts/bench_gateway.py [--litellm /tmp/litellm-venv/bin/litellm] [--requests 400] [--write]

`--write` replaces the "Gateway" section of docs/benchmarks.md with the results (card, command, date, figures).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
MODEL = "bench"
CHUNKS = 8
KEY = "sk-bench-" + "5f1c2a9e8d7b6a4c3e2f1a0b9c8d7e6f"  # both proxies require it (auth on, like production)


# ----------------------------------------------------------------------------- the fast upstream
def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _upstream_bodies() -> dict[str, bytes]:
    base = {"id": "chatcmpl-bench", "created": 0, "model": MODEL}
    usage = {"prompt_tokens": 5, "completion_tokens": CHUNKS, "total_tokens": 5 + CHUNKS}
    done = {**base, "object": "chat.completion", "usage": usage,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "tok " * CHUNKS}}]}
    events = b""
    for i in range(CHUNKS):
        delta = {"content": "tok "} | ({"role": "assistant"} if i == 0 else {})
        c = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta,
                                                                      "finish_reason": None}]}
        events += _chunk(b"data: " + json.dumps(c).encode() + b"\n\n")
    last = {**base, "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    events += _chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
    usage_chunk = {**base, "object": "chat.completion.chunk", "choices": [], "usage": usage}
    events += _chunk(b"data: " + json.dumps(usage_chunk).encode() + b"\n\n")
    events += _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n"
    health = {"status": "ok", "node": "bench", "in_flight": 0, "queue_depth": 0,
              "models": {MODEL: {"state": "loaded", "in_flight": 0, "queue_depth": 0}}, "devices": [],
              "memory": {"budget_bytes": 1 << 40, "used_bytes": 0, "free_bytes": 1 << 40}}
    models = {"object": "list", "data": [{"id": MODEL, "object": "model", "state": "loaded", "in_flight": 0,
                                          "queue_depth": 0, "memory_needed_bytes": 1, "memory_used_bytes": 1}]}

    def resp(body: bytes, ctype: bytes = b"application/json") -> bytes:
        return (b"HTTP/1.1 200 OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (ctype, len(body))) + body

    return {
        "done": resp(json.dumps(done).encode()),
        "stream": b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                  + events,
        "health": resp(json.dumps(health).encode()),
        "models": resp(json.dumps(models).encode()),
        "404": b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
    }


class _Upstream(asyncio.Protocol):
    bodies = _upstream_bodies()

    def connection_made(self, transport):  # noqa: ANN001
        self.t, self.buf = transport, b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buf[:head_end].decode("latin-1")
            m = re.search(r"(?im)^content-length:\s*(\d+)", head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < head_end + 4 + length:
                return
            body = self.buf[head_end + 4: head_end + 4 + length]
            self.buf = self.buf[head_end + 4 + length:]
            line = head.split("\r\n", 1)[0]
            if " /health" in line:
                self.t.write(self.bodies["health"])
            elif " /models" in line or " /v1/models" in line:
                self.t.write(self.bodies["models"])
            elif "/chat/completions" in line:
                self.t.write(self.bodies["stream" if b'"stream": true' in body or b'"stream":true' in body
                                        else "done"])
            else:
                self.t.write(self.bodies["404"])


def run_upstream(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Upstream, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


def run_floor(port: int, upstream: str) -> None:
    """The stack floor: hypercorn + one shared httpx client forwarding bytes, nothing else."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    sys.path.insert(0, str(REPO))
    from gateway.transport import make_transport
    from gateway.upstream import UpstreamClient

    client: httpx.AsyncClient | None = None

    async def app(scope, receive, send):  # noqa: ANN001
        nonlocal client
        if scope["type"] != "http":
            return
        if client is None:
            limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=30)
            client = UpstreamClient(limits=limits, transport=make_transport(limits), trust_env=False)
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        req = httpx.Request(scope["method"], upstream + scope["path"], content=body,
                            headers={"content-type": "application/json"},
                            extensions={"timeout": client.timeout.as_dict()})
        resp = await client.send(req, stream=True)
        try:
            await send({"type": "http.response.start", "status": resp.status_code,
                        "headers": [(b"content-type", resp.headers.get("content-type", "").encode())]})
            async for chunk in resp.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await resp.aclose()

    cfg = Config()
    cfg.bind = [f"127.0.0.1:{port}"]
    cfg.accesslog = None
    try:
        import uvloop
        uvloop.run(serve(app, cfg, mode="asgi"))
    except ImportError:
        asyncio.run(serve(app, cfg, mode="asgi"))


# ------------------------------------------------------------------------------------- harness
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def body(stream: bool) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": CHUNKS,
            "stream": stream}


async def one(client: httpx.AsyncClient, url: str, stream: bool) -> float:
    t0 = time.perf_counter()
    if stream:
        async with client.stream("POST", url, json=body(True)) as r:
            data = await r.aread()
        assert r.status_code == 200 and data.rstrip().endswith(b"[DONE]"), data[-200:]
    else:
        r = await client.post(url, json=body(False))
        assert r.status_code == 200, r.text
    return time.perf_counter() - t0


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time so far of a process and its children (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                    for c in (t / "children").read_text().split()]
    except OSError:
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(c) for c in children)


async def latency(targets: dict[str, str], pids: dict[str, int | None], stream: bool, n: int,
                  rounds: int) -> dict[str, dict[str, float]]:
    """Sequential requests, the targets taking turns: `rounds` rounds of n / rounds requests per target."""
    per = max(1, n // rounds)
    lat: dict[str, list[float]] = {k: [] for k in targets}
    cpu = dict.fromkeys(targets, 0.0)
    clients = {k: httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {KEY}"}) for k in targets}
    try:
        for k, base in targets.items():
            for _ in range(20):
                await one(clients[k], base + "/v1/chat/completions", stream)  # warm up connections and caches
        for r in range(rounds):
            for k in (list(targets) if r % 2 == 0 else list(reversed(targets))):
                url = targets[k] + "/v1/chat/completions"
                c0 = cpu_seconds(pids.get(k))
                lat[k] += [await one(clients[k], url, stream) for _ in range(per)]
                cpu[k] += cpu_seconds(pids.get(k)) - c0
    finally:
        for c in clients.values():
            await c.aclose()
    out = {}
    for k, v in lat.items():
        v.sort()
        out[k] = {"p50": statistics.median(v) * 1e3, "p99": v[int(0.99 * (len(v) - 1))] * 1e3,
                  "cpu": cpu[k] / len(v) * 1e3 if pids.get(k) else float("nan")}
    return out


async def throughput(base: str, stream: bool, total: int, concurrency: int) -> float:
    url = base + "/v1/chat/completions"
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits, headers={"Authorization": f"Bearer {KEY}"}) as c:
        for _ in range(20):
            await one(c, url, stream)
        sem = asyncio.Semaphore(concurrency)

        async def task() -> None:
            async with sem:
                await one(c, url, stream)

        t0 = time.perf_counter()
        await asyncio.gather(*(task() for _ in range(total)))
        return total / (time.perf_counter() - t0)


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm", help="litellm CLI ('' to skip)")
    ap.add_argument("--requests", type=int, default=400, help="sequential requests per target and mode")
    ap.add_argument("--rounds", type=int, default=10, help="latency rounds the targets take turns in")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--write", action="store_true", help="write the Gateway section of docs/benchmarks.md")
    ap.add_argument("--no-floor", action="store_true", help="skip the bare hypercorn + httpx forwarder row")
    ap.add_argument("--_upstream", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_floor", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._upstream:
        run_upstream(args._upstream)
        return
    if args._floor:
        run_floor(int(args._floor[0]), args._floor[1])
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    procs: list[subprocess.Popen] = []
    try:
        up_port, gw_port, ll_port = free_port(), free_port(), free_port()
        procs.append(start([sys.executable, __file__, "--_upstream", str(up_port)], tmp / "upstream.log"))
        upstream = f"http://127.0.0.1:{up_port}"
        wait_http(upstream + "/health")
        (tmp / "cortex.toml").write_text(
            f'[gateway]\nlisten = "127.0.0.1:{gw_port}"\nmetrics_listen = "127.0.0.1:{free_port()}"\n'
            f'api_keys = ["{KEY}"]\n'
            f'[[neurons]]\nname = "bench"\nendpoint = "{upstream}"\n')
        procs.append(start([sys.executable, "-m", "gateway", "serve", "--config", str(tmp / "cortex.toml"),
                            "--log-level", "warning"], tmp / "gateway.log"))
        targets = {"direct (fake upstream)": upstream}
        pids: dict[str, int | None] = {"direct (fake upstream)": procs[0].pid, "cortex gateway": procs[1].pid}
        if not args.no_floor:
            fl_port = free_port()
            procs.append(start([sys.executable, __file__, "--_floor", str(fl_port), upstream], tmp / "floor.log"))
            targets["floor: hypercorn + httpx"] = f"http://127.0.0.1:{fl_port}"
            pids["floor: hypercorn + httpx"] = procs[-1].pid
            wait_http(targets["floor: hypercorn + httpx"] + "/health")
        targets["cortex gateway"] = f"http://127.0.0.1:{gw_port}"
        wait_http(targets["cortex gateway"] + "/health")
        litellm = args.litellm and shutil.which(args.litellm)
        if litellm:
            (tmp / "litellm.yaml").write_text(
                f"model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n"
                f"      api_base: {upstream}/v1\n      api_key: sk-bench\n"
                "litellm_settings:\n  telemetry: false\n  set_verbose: false\n"
                f"general_settings:\n  master_key: {KEY}\n")
            procs.append(start([litellm, "--config", str(tmp / "litellm.yaml"), "--host", "127.0.0.1", "--port",
                                str(ll_port), "--num_workers", "1"], tmp / "litellm.log",
                               {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}))
            targets["LiteLLM proxy"] = f"http://127.0.0.1:{ll_port}"
            pids["LiteLLM proxy"] = procs[-1].pid
            wait_http(targets["LiteLLM proxy"] + "/health/liveliness", timeout=180)
        results: dict[str, dict[str, dict[str, float]]] = {name: {} for name in targets}
        for stream in (False, True):
            mode = "stream" if stream else "non-stream"
            lat = asyncio.run(latency(targets, pids, stream, args.requests, args.rounds))
            for name, base in targets.items():
                r = results[name][mode] = lat[name]
                r["rps"] = asyncio.run(throughput(base, stream, args.requests * 3, args.concurrency))
                print(f"{name:26s} {mode:10s} p50 {r['p50']:7.2f} ms  p99 {r['p99']:7.2f} ms  "
                      f"CPU {r['cpu']:6.3f} ms/req  {r['rps']:8.0f} req/s", flush=True)
        table = render(results, args)
        print(table)
        if args.write:
            write_section(table)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def render(results: dict, args: argparse.Namespace) -> str:
    direct = results["direct (fake upstream)"]
    gw = results["cortex gateway"]
    cpu = _cpu_name()
    lines = [
        "## Gateway",
        "",
        f"Card: CPU only, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; upstream, proxies and "
        "load generator on the same machine (loopback); load average at the end "
        f"{os.getloadavg()[0]:.1f} (a shared machine: figures move by tens of percent between runs). "
        "Date: " + date.today().isoformat() + ".",
        "",
        f"Command: `python scripts/bench_gateway.py --requests {args.requests} --concurrency {args.concurrency}"
        f"{'' if args.rounds == 10 else f' --rounds {args.rounds}'} --write` (LiteLLM from "
        "`pip install 'litellm[proxy]'` in its own venv, one worker). Latency: sequential requests to the last "
        f"byte, the targets taking turns in {args.rounds} rounds; added = proxied minus direct. CPU: the proxy "
        f"process's CPU time per request during the latency rounds. Throughput: {args.concurrency} in flight. "
        f"Stream = {CHUNKS} content chunks + finish + usage + [DONE].",
        "",
        "| target | mode | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU ms/req | req/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, modes in results.items():
        for mode, r in modes.items():
            added = ("-", "-") if name.startswith("direct") else (
                f"{r['p50'] - direct[mode]['p50']:.2f}", f"{r['p99'] - direct[mode]['p99']:.2f}")
            cpu_ms = "-" if name.startswith("direct") or r["cpu"] != r["cpu"] else f"{r['cpu']:.2f}"
            lines.append(f"| {name} | {mode} | {r['p50']:.2f} | {r['p99']:.2f} | {added[0]} | {added[1]} | "
                         f"{cpu_ms} | {r['rps']:.0f} |")
    added = {m: gw[m]["p50"] - direct[m]["p50"] for m in gw}
    met = all(a < 1.0 for a in added.values())
    lines += [
        "",
        f"Goal (< 1 ms added at p50): **{'met' if met else 'not met'} in this run** (non-stream "
        f"{added['non-stream']:.2f} ms, stream {added['stream']:.2f} ms).",
        "",
        "Where the gateway's time goes: the hot routes (`POST /v1/chat/completions`, `/v1/completions`) are served "
        "by a raw ASGI handler in front of Quart (`gateway/fastpath.py`), and the shared httpx client sends through "
        "a pooled asyncio HTTP/1.1 transport (`gateway/transport.py`) instead of httpcore/h11/anyio. What is left "
        "is mostly the stack: hypercorn with h11 parsing the request and writing the response is roughly 40 % "
        "of the gateway's CPU per request, httpx's request/response objects about a tenth; the floor row "
        "is that stack without the gateway. The gateway forwards the client's JSON bytes as they are (the usage "
        "request of a stream is spliced in), parses stream chunks only when they carry usage or an error, sends "
        "each upstream request in one write and keeps no cookie jar.",
    ]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(section: str) -> None:
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Gateway\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
