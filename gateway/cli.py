"""The `cortex` command: run the gateway and operate the fleet through its admin routes.

```
cortex serve [--config cortex.toml]
cortex status [--endpoint URL] [--json]      nodes, devices, memory, models, states, load
cortex models                                 the merged catalogue
cortex load MODEL [--node NAME]               load (evicting per policy if needed)
cortex unload MODEL [--node NAME]             unload from one node or from every node
cortex pin MODEL / cortex unpin MODEL         never evict / allow eviction again
```
Client commands talk to `--endpoint` (default `$CORTEX_ENDPOINT` or http://127.0.0.1:31313) with `--api-key`
(default `$CORTEX_API_KEY`).
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

DEFAULT_ENDPOINT = "http://127.0.0.1:31313"
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_STATE_STYLE = {"loaded": "green", "loading": "yellow", "unloading": "yellow", "failed": "red",
                "available": "dim", "unreachable": "red", "unavailable": "red"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `cortex` console script and `python -m gateway`."""
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    console = Console()
    try:
        return args.func(args, _client(args), console)
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach the gateway at {args.endpoint}: {exc}[/red]")
        return 2
    except _Failed as exc:
        console.print(f"[red]{exc}[/red]")
        return 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cortex", description="cortex-jax fleet gateway")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", help="cortex.toml (default: $CORTEX_CONFIG, else built-in defaults)")
    serve.add_argument("--log-level", default=os.environ.get("CORTEX_LOG_LEVEL", "info"), type=str.upper,
                       choices=_LOG_LEVELS, help="default: $CORTEX_LOG_LEVEL, else info")

    def client_cmd(name: str, func: Any, help: str, model: bool = False, node: bool = False) -> None:
        c = sub.add_parser(name, help=help)
        c.add_argument("--endpoint", default=os.environ.get("CORTEX_ENDPOINT", DEFAULT_ENDPOINT),
                       help=f"gateway URL (default: $CORTEX_ENDPOINT, else {DEFAULT_ENDPOINT})")
        c.add_argument("--api-key", default=os.environ.get("CORTEX_API_KEY"),
                       help="key for a gateway with api_keys (default: $CORTEX_API_KEY)")
        c.add_argument("--json", action="store_true", help="print the raw JSON")
        if model:
            c.add_argument("model")
        if node:
            c.add_argument("--node", help="neuron name (default: chosen by the gateway / every node)")
        c.set_defaults(func=func)

    client_cmd("status", _status, "fleet status table")
    client_cmd("models", _models, "merged model catalogue")
    client_cmd("load", _load, "load a model", model=True, node=True)
    client_cmd("unload", _unload, "unload a model", model=True, node=True)
    client_cmd("pin", _pin, "pin a model (never evicted)", model=True)
    client_cmd("unpin", _unpin, "unpin a model", model=True)
    return p


def _serve(args: argparse.Namespace) -> int:
    from gateway.server import serve
    from gateway.settings import ConfigError, load_settings

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"cortex: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        try:
            import uvloop  # optional: a faster event loop when installed
        except ImportError:
            asyncio.run(serve(settings))
        else:
            uvloop.run(serve(settings))
    except OSError as exc:
        if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise
        g = settings.gateway
        where = g.listen + (f" / {g.metrics_listen} (metrics)" if g.metrics_listen else "")
        print(f"cortex: cannot listen on {where}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


class _Failed(Exception):
    pass


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.endpoint, headers=headers, timeout=httpx.Timeout(30, read=3600))


def _call(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = client.request(method, path, json=body)
    try:
        data = resp.json()
    except ValueError:
        data = None
    if resp.status_code >= 400 and not (path == "/health" and data):
        err = (data or {}).get("error") if isinstance(data, dict) else None
        msg = err.get("message") if isinstance(err, dict) else resp.text[:300]
        hint = " (pass --api-key or set CORTEX_API_KEY)" if resp.status_code == 401 else ""
        raise _Failed(f"{method} {path}: HTTP {resp.status_code}: {msg}{hint}")
    return data


def _model_cell(m: dict[str, Any]) -> str:
    cell = f"{m['id']} {_state(m['state'])}"
    if m["state"] == "loading" and isinstance(m.get("progress"), (int, float)):
        cell += f" {m['progress']:.0%}"
    return cell + (" (pinned)" if m["pinned"] else "")


def _state(s: str) -> str:
    return f"[{_STATE_STYLE.get(s, 'white')}]{s}[/]"


def _gib(v: Any) -> str:
    return "-" if not isinstance(v, (int, float)) else f"{v / (1 << 30):.1f}"


def _status(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    data = _call(client, "GET", "/admin/status")
    if args.json:
        console.print_json(json.dumps(data))
        return 0
    nodes = Table(title=f"cortex fleet: {data['status']}", title_justify="left")
    for col in ("node", "state", "devices", "memory GiB used/budget (free)", "in flight", "queue", "models"):
        nodes.add_column(col)
    for n in data["nodes"]:
        kinds: dict[str, int] = {}
        for d in n["devices"]:
            kind = str(d.get("kind") or d.get("platform") or "?")
            kinds[kind] = kinds.get(kind, 0) + 1
        mem = n["memory"]
        models = ", ".join(_model_cell(m) for m in n["models"] if m["state"] != "available") or "-"
        if not n["up"]:
            state = f"[red]down[/]\n[dim]{n['last_error'] or ''}[/]"
        else:
            state = "[yellow]draining[/]" if n["status"] == "draining" else "[green]up[/]"
        nodes.add_row(
            f"{n['name']}\n[dim]{n['endpoint']}[/]", state,
            ", ".join(f"{c}× {k}" for k, c in kinds.items()) or "-",
            f"{_gib(mem.get('used_bytes'))}/{_gib(mem.get('budget_bytes'))} ({_gib(mem.get('free_bytes'))})",
            str(max(n["in_flight"], n["gateway_in_flight"])), str(n["queue_depth"]), models,
        )
    console.print(nodes)
    _print_models(data["models"], console)
    return 0


def _print_models(models: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="models", title_justify="left")
    for col in ("model", "state", "where", "pinned", "priority", "aliases"):
        table.add_column(col)
    for m in models:
        where = ", ".join(f"{loc['node']}:{_state(loc['state'])}" for loc in m["locations"]) or "-"
        table.add_row(m["id"], _state(m["state"]), where, "yes" if m["pinned"] else "", str(m["priority"]),
                      ", ".join(m["aliases"]))
    console.print(table)


def _models(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    data = _call(client, "GET", "/v1/models")
    if args.json:
        console.print_json(json.dumps(data))
    else:
        _print_models(data["data"], console)
    return 0


def _load(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    body = {"model": args.model} | ({"node": args.node} if args.node else {})
    with console.status(f"loading {args.model}…"):
        data = _call(client, "POST", "/admin/models/load", body)
    console.print(f"{data['model']} loaded on {data['node']}"
                  + (f" in {data['load_seconds']}s" if data.get("load_seconds") is not None else ""))
    return 0


def _unload(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    body = {"model": args.model} | ({"node": args.node} if args.node else {})
    data = _call(client, "POST", "/admin/models/unload", body)
    where = ", ".join(data["unloaded_from"]) or "nowhere (it was not loaded)"
    console.print(f"{data['model']} unloaded from {where}")
    return 0


def _pin(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    data = _call(client, "POST", "/admin/models/pin", {"model": args.model})
    console.print(f"{data['model']} pinned")
    return 0


def _unpin(args: argparse.Namespace, client: httpx.Client, console: Console) -> int:
    data = _call(client, "POST", "/admin/models/unpin", {"model": args.model})
    console.print(f"{data['model']} unpinned")
    return 0
