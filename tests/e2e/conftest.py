"""End to end through real processes: SDK → `python -m gateway serve` → `python -m serving.neuron` (embedded model).

Each test module gets ONE neuron and ONE gateway (module-scoped `stack`), started together on free loopback
ports and always terminated. The neuron uses the serving tests' settings and their persistent JAX compilation
cache (tests/serving/conftest.py), so the jitted steps are compiled once per machine, not once per process.

The embedded model has random weights: tests assert structure (event grammar, block and item types, usage,
stop reasons), never content.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.conftest import BASE_SETTINGS, COMPILE_CACHE, Neuron, free_port, render_toml, stop_neuron

ROOT = Path(__file__).resolve().parents[2]
MODEL = "qwen3.6-tiny"
KEY = "e2e-secret"
START_TIMEOUT_S = 180


@dataclass
class Stack:
    neuron: Neuron
    gateway: subprocess.Popen
    url: str  # the gateway
    metrics_url: str
    gateway_log: Path

    def log(self) -> str:
        return self.gateway_log.read_text(errors="replace")[-4000:] + "\n--- neuron ---\n" + self.neuron.log()[-4000:]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Gateway metric samples keyed by (name, sorted labels)."""
        text = httpx.get(self.metrics_url, timeout=10).text
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text)
            for s in fam.samples
        }


def requests_total(samples: dict, **labels: str) -> float:
    """Sum of `cortex_requests_total` over the samples whose labels include `labels`."""
    return sum(
        v for (name, lbl), v in samples.items()
        if name == "cortex_requests_total" and labels.items() <= dict(lbl).items()
    )


def wait_for_metrics(stack: Stack, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
    """Scrape until `predicate(samples)` holds (streams are counted as they end); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        samples = stack.metrics()
        if predicate(samples):
            return samples
        if time.monotonic() > deadline:
            lines = [f"{n}{dict(lbl)} {v}" for (n, lbl), v in samples.items() if n == "cortex_requests_total"]
            raise AssertionError("metrics did not move as expected:\n" + "\n".join(lines))
        time.sleep(0.1)


def _gateway_toml(port: int, metrics_port: int, neuron_url: str) -> str:
    return "\n".join([
        "[gateway]",
        f'listen = "127.0.0.1:{port}"',
        f'metrics_listen = "127.0.0.1:{metrics_port}"',
        f"api_keys = {json.dumps([KEY])}",
        "poll_interval = 0.2",
        "failure_threshold = 3",
        "load_wait_seconds = 60",
        "[timeouts]",
        "connect = 5",
        "read = 120",
        "health = 2",
        "[[neurons]]",
        'name = "local"',
        f'endpoint = "{neuron_url}"',
    ]) + "\n"


def _stop(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ready(stack: Stack) -> bool:
    """The gateway sees the node up and the model loaded there."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        health = httpx.get(stack.url + "/health", timeout=2).json()
        if health.get("nodes_up", 0) < 1 or MODEL not in health.get("models_loaded", []):
            return False
        models = httpx.get(stack.neuron.url + "/models", timeout=5).json()["data"]
        return any(m["id"] == MODEL and m["state"] == "loaded" for m in models)
    return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "NEURON_COMPILE_CACHE_DIR": str(COMPILE_CACHE),
           "PYTHONUNBUFFERED": "1"}
    env.pop("CORTEX_CONFIG", None)
    n_port, g_port, m_port = free_port(), free_port(), free_port()
    (tmp / "neuron.toml").write_text(render_toml(dict(BASE_SETTINGS)))
    (tmp / "cortex.toml").write_text(_gateway_toml(g_port, m_port, f"http://127.0.0.1:{n_port}"))
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for name, cmd in [
            ("neuron", ["-m", "serving.neuron", "--config", str(tmp / "neuron.toml"), "--port", str(n_port)]),
            ("gateway", ["-m", "gateway", "serve", "--config", str(tmp / "cortex.toml")]),
        ]:
            logs.append((tmp / f"{name}.log").open("wb"))
            procs.append(subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=logs[-1],
                                          stderr=subprocess.STDOUT))
        neuron = Neuron(f"http://127.0.0.1:{n_port}", procs[0], tmp / "neuron.log")
        s = Stack(neuron, procs[1], f"http://127.0.0.1:{g_port}", f"http://127.0.0.1:{m_port}/metrics",
                  tmp / "gateway.log")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ready(s):
            dead = [p.args[2] for p in procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"{dead or 'start-up timed out'}:\n{s.log()}")
            time.sleep(0.2)
        yield s
    finally:
        for p in reversed(procs):
            if p is procs[0]:
                stop_neuron(Neuron("", p, tmp / "neuron.log"))
            else:
                _stop(p)
        for f in logs:
            f.close()


def png_data(w: int = 64, h: int = 64) -> str:
    """Base64 PNG bytes (no data: prefix)."""
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
