"""Settings from TOML, NEURON_* environment and CLI flags; the example config parses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.settings import EMBEDDED_ID, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_serve_the_embedded_model():
    s = load_settings([], env={})
    assert (s.host, s.port) == ("127.0.0.1", 13131)
    assert s.serves_embedded and s.load_at_start == (EMBEDDED_ID,)
    assert s.memory_budget_bytes is None


def test_example_config_parses(tmp_path, monkeypatch):
    example = ROOT / "examples" / "neuron.toml"
    text = example.read_text()
    # models_dir in the example must exist for validation: point it at a temporary directory
    cfg = tmp_path / "neuron.toml"
    cfg.write_text(text.replace('models_dir = "/srv/models"', f'models_dir = "{tmp_path}"'))
    s = load_settings(["--config", str(cfg)], env={})
    assert s.port == 13131 and s.host == "0.0.0.0"
    assert s.models["qwen3.6-27b"] == Path("/srv/models/Qwen3.6-27B")
    assert s.memory_budget_gb == 70 and s.tensor_parallel == 1
    assert s.serves_embedded  # embedded = true in the example


def test_precedence_toml_env_cli(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text('[neuron]\nlisten = "0.0.0.0:9000"\nslots = 2\nqueue = 3\n[models]\na = "ckpt/a"\n')
    s = load_settings(["--config", str(cfg), "--slots", "5", "--model", "b=/x/b", "--load", "a,b"],
                      env={"NEURON_SLOTS": "4", "NEURON_QUEUE": "7", "NEURON_MEMORY_BUDGET_GB": "1.5"})
    assert (s.host, s.port, s.slots, s.queue) == ("0.0.0.0", 9000, 5, 7)
    assert s.models == {"a": tmp_path / "ckpt" / "a", "b": Path("/x/b")}  # relative to the config file
    assert s.load_at_start == ("a", "b") and not s.serves_embedded
    assert s.memory_budget_bytes == int(1.5 * 1024**3)


def test_image_fetch_settings(tmp_path):
    assert load_settings([], env={}).image_fetch_hosts == ()  # default: every remote URL refused
    cfg = tmp_path / "n.toml"
    cfg.write_text('image_fetch_hosts = ["Images.Example.com"]\nimage_fetch_timeout_s = 3\n')
    s = load_settings(["--config", str(cfg)], env={"NEURON_IMAGE_FETCH_ALLOW_HTTP": "true"})
    assert s.image_fetch_hosts == ("images.example.com",) and s.image_fetch_timeout_s == 3.0
    assert s.image_fetch_allow_http
    s = load_settings(["--image-fetch-hosts", "a.test,b.test", "--image-fetch-allow-http", "false"],
                      env={"NEURON_IMAGE_FETCH_TIMEOUT_S": "2.5"})
    assert s.image_fetch_hosts == ("a.test", "b.test") and s.image_fetch_timeout_s == 2.5
    assert not s.image_fetch_allow_http


@pytest.mark.parametrize("argv,env,needle", [
    (["--slots", "zero"], {}, "slots"),
    (["--image-fetch-timeout-s", "0"], {}, "image_fetch_timeout_s"),
    (["--slots", "0"], {}, "slots"),
    ([], {"NEURON_DTYPE": "int4"}, "dtype"),
    ([], {"NEURON_NO_SUCH": "1"}, "no_such"),
    (["--model", "noequals"], {}, "models"),
    (["--memory-budget-gb", "-1"], {}, "memory_budget_gb"),
    ([], {"NEURON_EMBEDDED": "maybe"}, "embedded"),
    (["--log-level", "loud"], {}, "log_level"),
])
def test_bad_settings_name_the_key(argv, env, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(argv, env=env)


def test_bad_toml_names_the_file(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("slots = = 3")
    with pytest.raises(SettingsError, match="bad.toml"):
        load_settings(["--config", str(cfg)], env={})
    cfg.write_text("colour = 'blue'")
    with pytest.raises(SettingsError, match="colour"):
        load_settings(["--config", str(cfg)], env={})


def test_main_reports_bad_config_and_exits_2(tmp_path, capsys):
    from serving.neuron import main

    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_parallel_settings_per_model_and_default(tmp_path):
    from serving.parallel import MeshSpec

    cfg = tmp_path / "n.toml"
    cfg.write_text('slots = 4\ndata_parallel = 2\n[parallel]\na = "2x4"\nb = 2\n'
                   '[parallel.c]\ntensor_parallel = 4\n')
    s = load_settings(["--config", str(cfg), "--parallel", "d=1x8"], env={"NEURON_TENSOR_PARALLEL": "2"})
    assert s.mesh_for("a") == MeshSpec(2, 4) and s.mesh_for("b") == MeshSpec(1, 2)
    assert s.mesh_for("c") == MeshSpec(1, 4) and s.mesh_for("d") == MeshSpec(1, 8)
    assert s.mesh_for("other") == MeshSpec(2, 2)  # the defaults
    assert load_settings([], env={"NEURON_PARALLEL": "x=2x2,y=4"}).mesh_for("y") == MeshSpec(1, 4)


@pytest.mark.parametrize("argv,needle", [
    (["--slots", "3", "--data-parallel", "2"], "data_parallel: must divide slots"),
    (["--slots", "2", "--parallel", "a=4x1"], "parallel.a"),
    (["--parallel", "a=2x"], "parallel"),
    (["--parallel", "a=0x2"], "parallel"),
])
def test_bad_parallel_settings(argv, needle):
    with pytest.raises(SettingsError, match=needle):
        load_settings(argv, env={})


def test_main_reports_a_busy_port_and_exits_2(tmp_path):
    """A listen address in use is one line on stderr and exit 2, not a traceback."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "serving.neuron", "--no-embedded", "--port", str(port)],
                              cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                              text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr
