"""Real neuron processes on loopback ports for the serving tests.

``start_neuron(config, env)`` launches ``python -m serving.neuron`` with a TOML config on a free port, waits
until it answers and its start-up models are loaded, and always terminates it. Each test module starts one
(module-scoped fixture). A persistent JAX compilation cache shared by every neuron of the run (and across runs)
means the jitted steps are compiled once, not once per process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILE_CACHE = Path(os.environ.get("CORTEX_TEST_XLA_CACHE") or Path(os.environ.get(
    "CORTEX_JAX_CACHE", Path.home() / ".cache" / "cortex-jax")) / "xla-tests")
START_TIMEOUT_S = 180
# Small, test-friendly engine: one prefill bucket (one compile), 2 slots.
BASE_SETTINGS = {"slots": 2, "queue": 4, "context_limit": 1024, "prefill_buckets": [256], "keepalive_s": 0.5,
                 "max_request_bytes": 1048576, "drain_timeout_s": 30, "log_format": "text"}


def render_toml(settings: dict, models: dict[str, str] | None = None) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in settings.items()]  # JSON scalars/lists are valid TOML here
    if models:
        lines += ["[models]"] + [f"{json.dumps(k)} = {json.dumps(str(v))}" for k, v in models.items()]
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Neuron:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def client(self, timeout: float = 120.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def models(self) -> dict[str, dict]:
        return {m["id"]: m for m in httpx.get(f"{self.url}/models", timeout=30).json()["data"]}

    def wait_for(self, predicate, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")


def start_neuron(tmp: Path, settings: dict | None = None, models: dict[str, str] | None = None,
                 env: dict[str, str] | None = None, wait_loaded: tuple[str, ...] = ("qwen3.6-tiny",),
                 module: str = "serving.neuron") -> Neuron:
    """``module``: the entry point to run (a test wrapper around ``serving.neuron`` that installs hooks)."""
    port = free_port()
    cfg = tmp / "neuron.toml"
    cfg.write_text(render_toml({**BASE_SETTINGS, **(settings or {})}, models))
    log_path = tmp / "neuron.log"
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", "NEURON_COMPILE_CACHE_DIR": str(COMPILE_CACHE),
                "PYTHONUNBUFFERED": "1", **(env or {})}
    log_file = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(cfg), "--port", str(port)],
                            cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT)
    neuron = Neuron(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"neuron exited with {proc.returncode}:\n{neuron.log()[-4000:]}")
        if time.monotonic() > deadline:
            stop_neuron(neuron)
            raise RuntimeError(f"neuron did not become ready:\n{neuron.log()[-4000:]}")
        with contextlib.suppress(httpx.HTTPError):
            models = neuron.models()
            states = [models.get(m, {}).get("state") for m in wait_loaded]
            if "failed" in states:
                stop_neuron(neuron)
                raise RuntimeError(f"start-up load failed: {models}")
            if all(s == "loaded" for s in states):
                return neuron
        time.sleep(0.25)


def stop_neuron(neuron: Neuron, timeout: float = 30.0) -> int | None:
    if neuron.proc.poll() is None:
        neuron.proc.send_signal(signal.SIGTERM)
        try:
            neuron.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            neuron.proc.kill()
            neuron.proc.wait(10)
    return neuron.proc.returncode


@pytest.fixture(scope="session")
def neuron(tmp_path_factory) -> Iterator[Neuron]:
    """The default test neuron (shared by the modules that need no special config): the embedded model."""
    n = start_neuron(tmp_path_factory.mktemp("neuron"))
    try:
        yield n
    finally:
        stop_neuron(n)


@pytest.fixture(scope="session")
def oai(neuron):
    from openai import OpenAI

    with OpenAI(base_url=f"{neuron.url}/v1", api_key="unused", max_retries=0, timeout=120) as client:
        yield client
