"""Gateway test harness: real processes on free loopback ports (fake neurons, real neurons, `python -m gateway serve`).

Every process is started by a fixture whose finalizer terminates it (then kills it), even when a test fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
HTTP = httpx.Client(timeout=5)  # one client for the harness (a fresh httpx client costs an SSL context)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll `pred` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = pred()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what or pred}: last error {last_exc!r}")


def toml_dumps(data: dict[str, Any]) -> str:
    """A tiny TOML writer for test configs (scalars, arrays, tables, arrays of tables)."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(type(v))

    lines = [
        f"{k} = {val(v)}"
        for k, v in data.items()
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict)))
    ]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {val(vv)}" for kk, vv in v.items()]
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines += [f"{kk} = {val(vv)}" for kk, vv in item.items()]
    return "\n".join(lines) + "\n"


class Proc:
    """A child process with its output in a log file; `stop()` is idempotent."""

    def __init__(self, cmd: list[str], log: Path, env: dict[str, str] | None = None):
        self.cmd, self.log_path, self.env = cmd, log, env
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(self.env or {})}
        env.pop("CORTEX_CONFIG", None)
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.cmd, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, like a crashed host."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.alive():
            self.proc.terminate()

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None:
            self._log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class FakeNeuron(Proc):
    """`python -m tests.gateway.fake_neuron` on a free port."""

    def __init__(self, tmp: Path, spec: dict[str, Any]):
        self.spec, self.port = spec, free_port()
        self.name = spec["name"]
        super().__init__(
            [
                sys.executable,
                "-m",
                "tests.gateway.fake_neuron",
                "--port",
                str(self.port),
                "--spec",
                json.dumps(spec),
            ],
            tmp / f"neuron-{self.name}.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> FakeNeuron:
        super().start()
        if wait:
            self.wait()
        return self

    def wait(self) -> FakeNeuron:
        wait_until(
            lambda: HTTP.get(self.url + "/health", timeout=1).status_code == 200,
            30,
            what=f"fake neuron {self.name}",
        )
        return self

    def ctl(self, path: str, body: dict[str, Any] | None = None) -> Any:
        if body is None:
            return HTTP.get(self.url + "/_fake/" + path).json()
        return HTTP.post(self.url + "/_fake/" + path, json=body).json()

    def stats(self) -> dict[str, Any]:
        return self.ctl("stats")

    def reset(self) -> None:
        self.ctl("reset", {})


class RealNeuron(Proc):
    """`python -m serving.neuron` (JAX on CPU) on a free port, with the persistent compilation cache the serving
    tests use, so a run compiles each step shape once (and a later run not at all)."""

    def __init__(self, tmp: Path, name: str, args: list[str], env: dict[str, str] | None = None):
        from tests.serving.conftest import COMPILE_CACHE

        self.name, self.port = name, free_port()
        cmd = [
            sys.executable,
            "-m",
            "serving.neuron",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--node-name",
            name,
            "--log-format",
            "text",
            "--compile-cache-dir",
            str(COMPILE_CACHE),
            "--prefill-buckets",
            "64",
            "--slots",
            "2",
            "--context-limit",
            "512",
            "--max-tokens-default",
            "8",
            *args,
        ]
        super().__init__(cmd, tmp / f"real-{name}.log", {"JAX_PLATFORMS": "cpu", **(env or {})})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self) -> RealNeuron:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"neuron {self.name} exited:\n{self.output()[-3000:]}")
            return HTTP.get(self.url + "/health", timeout=2).status_code == 200

        wait_until(ready, 120, interval=0.2, what=f"neuron {self.name}")
        return self

    def pause(self) -> None:
        """SIGSTOP: the process hangs (its sockets still accept connections, nothing answers)."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)


class Gateway(Proc):
    """`python -m gateway serve --config cortex.toml` with generated config files."""

    def __init__(
        self,
        tmp: Path,
        neurons: list[tuple[str, str]],
        models: list[dict[str, Any]] | None = None,
        gateway: dict[str, Any] | None = None,
        eviction: dict[str, Any] | None = None,
        timeouts: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.port, self.metrics_port = free_port(), free_port()
        tmp = tmp / f"gateway-{self.port}"
        tmp.mkdir()
        cfg: dict[str, Any] = {
            "gateway": {
                "listen": f"127.0.0.1:{self.port}",
                "metrics_listen": f"127.0.0.1:{self.metrics_port}",
                "poll_interval": 0.2,
                "failure_threshold": 2,
                "load_wait_seconds": 20,
            }
            | (gateway or {}),
            "eviction": {"strategy": "lru"} | (eviction or {}),
            "timeouts": {"connect": 2, "read": 30, "health": 1} | (timeouts or {}),
            "neurons": [{"name": n, "endpoint": u} for n, u in neurons],
        }
        if models is not None:
            (tmp / "models.toml").write_text(toml_dumps({"models": models}))
            cfg = {"models_config": "models.toml"} | cfg
        self.config = tmp / "cortex.toml"
        self.config.write_text(toml_dumps(cfg))
        super().__init__(
            [sys.executable, "-m", "gateway", "serve", "--config", str(self.config)], tmp / "gateway.log", env
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, up: int | None = None) -> Gateway:
        """Start and wait until it answers `/health` (and, with `up`, until that many nodes are up)."""
        super().start()
        return self.wait(up)

    def wait(self, up: int | None = None) -> Gateway:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"gateway exited:\n{self.output()}")
            h = HTTP.get(self.url + "/health", timeout=1).json()
            return up is None or h["nodes_up"] >= up

        wait_until(ready, 30, what="gateway health")
        return self

    def status(self, headers: dict[str, str] | None = None) -> dict[str, Any]:
        return HTTP.get(self.url + "/admin/status", headers=headers).json()

    def model_state(self, model: str, node: str) -> str | None:
        for n in self.status()["nodes"]:
            if n["name"] == node:
                return next((m["state"] for m in n["models"] if m["id"] == model), None)
        return None


def start_all(*procs: Proc) -> None:
    """Start processes together (start-up dominates test time on a busy machine), then wait for each."""
    for p in procs:
        Proc.start(p)
    for p in procs:
        p.wait()


def stop_all(procs: list[Proc]) -> None:
    for p in procs:
        p.terminate()
    for p in reversed(procs):
        p.stop()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Factory for processes that are always stopped at the end of the test."""
    procs: list[Proc] = []

    def make(kind: str, *args: Any, **kwargs: Any) -> Any:
        cls = {"neuron": FakeNeuron, "gateway": Gateway}[kind]
        proc = cls(tmp_path, *args, **kwargs)
        procs.append(proc)
        return proc

    yield make
    stop_all(procs)


@pytest.fixture(scope="module")
def module_spawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """Like `spawn`, for fixtures shared by a whole module."""
    tmp = tmp_path_factory.mktemp("fleet")
    procs: list[Proc] = []

    def make(kind: str, *args: Any, **kwargs: Any) -> Any:
        cls = {"neuron": FakeNeuron, "gateway": Gateway}[kind]
        proc = cls(tmp, *args, **kwargs)
        procs.append(proc)
        return proc

    yield make
    stop_all(procs)


def chat_body(model: str, text: str = "hello there", **kw: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]} | kw


def families(gw) -> set[str]:
    """Metric family names on the gateway's metrics listener."""
    return {fam.name for fam in text_string_to_metric_families(HTTP.get(gw.metrics_url).text)}


def metrics(gw) -> dict[tuple[str, tuple], float]:
    """Every sample on the gateway's metrics listener: (name, sorted labels) -> value."""
    out = {}
    for fam in text_string_to_metric_families(HTTP.get(gw.metrics_url).text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == want for k, want in labels.items())
    )
