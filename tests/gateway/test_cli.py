"""The `cortex` CLI against a running gateway: status, models, load, unload, pin, unpin."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from gateway.cli import main
from tests.gateway.conftest import REPO, start_all


@pytest.fixture(scope="module")
def gw(module_spawn):
    a = module_spawn(
        "neuron",
        {
            "name": "a",
            "budget_bytes": 100 << 30,
            "models": [
                {"id": "m1", "memory_needed_bytes": 1 << 30, "loaded": True},
                {"id": "m2", "memory_needed_bytes": 2 << 30},
            ],
        },
    )
    b = module_spawn("neuron", {"name": "b", "models": [{"id": "m2", "memory_needed_bytes": 2 << 30}]})
    gw = module_spawn(
        "gateway",
        [("a", a.url), ("b", b.url)],
        models=[{"id": "m2", "aliases": ["two"]}],
        gateway={"api_keys": ["secret"]},
    )
    start_all(a, b, gw)
    return gw.wait(up=2)


def run_cortex(gw, *args: str, key: str | None = "secret") -> subprocess.CompletedProcess:
    """The real console entry point in a subprocess (slow to start, so used once)."""
    env = {**os.environ, "COLUMNS": "200", "CORTEX_ENDPOINT": gw.url}
    env.pop("CORTEX_API_KEY", None)
    if key:
        env["CORTEX_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def cortex(gw, capsys, monkeypatch):
    """`cortex ARGS` through `gateway.cli.main` in-process; returns (exit code, stdout)."""
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("CORTEX_ENDPOINT", gw.url)

    def call(*args: str, key: str | None = "secret") -> subprocess.CompletedProcess:
        if key:
            monkeypatch.setenv("CORTEX_API_KEY", key)
        else:
            monkeypatch.delenv("CORTEX_API_KEY", raising=False)
        code = main(list(args))
        return subprocess.CompletedProcess(args, code, capsys.readouterr().out, "")

    return call


def test_status_in_a_subprocess(gw):
    out = run_cortex(gw, "status")
    assert out.returncode == 0, out.stderr
    assert "a" in out.stdout and "m1" in out.stdout and "1× fake" in out.stdout and "up" in out.stdout


def test_status_models_load_unload_pin(cortex):
    out = cortex("status", "--json")
    assert out.returncode == 0 and '"nodes"' in out.stdout

    load = cortex("load", "two", "--node", "b")
    assert load.returncode == 0, load.stdout + load.stderr
    assert "m2 loaded on b" in load.stdout
    models = cortex("models")
    assert "m2" in models.stdout and "b:loaded" in models.stdout.replace(" ", "")

    pin = cortex("pin", "m2")
    assert pin.returncode == 0 and "pinned" in pin.stdout
    assert "yes" in cortex("models").stdout
    assert cortex("unpin", "m2").returncode == 0

    unload = cortex("unload", "m2")
    assert unload.returncode == 0 and "unloaded from b" in unload.stdout


def test_errors_exit_nonzero_with_message(cortex):
    unknown = cortex("load", "nope")
    assert unknown.returncode == 1 and "does not exist" in unknown.stdout
    denied = cortex("status", key=None)
    assert denied.returncode == 1 and "401" in denied.stdout and "CORTEX_API_KEY" in denied.stdout
    bad_node = cortex("load", "m1", "--node", "zz")
    assert bad_node.returncode == 1 and "unknown node" in bad_node.stdout


def test_serve_start_up_errors_are_one_line_and_exit_2():
    """A busy listen address or a bad --log-level ends `cortex serve` with a message, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = f"127.0.0.1:{busy.getsockname()[1]}"
        env = {**os.environ, "CORTEX_LISTEN": listen, "CORTEX_METRICS_LISTEN": "",
               "CORTEX_NEURONS": "http://127.0.0.1:9"}
        env.pop("CORTEX_CONFIG", None)
        out = subprocess.run([sys.executable, "-m", "gateway", "serve"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert f"cannot listen on {listen}" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(SystemExit) as bad_level:
        main(["serve", "--log-level", "loud"])
    assert bad_level.value.code == 2
