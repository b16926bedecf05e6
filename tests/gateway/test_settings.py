"""Config parsing: defaults, the shipped examples, env overrides; errors that name file, key and reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import DEFAULT_NEURON, ConfigError, EvictionStrategy, load_settings
from tests.gateway.conftest import REPO


def write(tmp: Path, cortex: str, models: str | None = None) -> Path:
    if models is not None:
        (tmp / "models.toml").write_text(models)
        cortex = 'models_config = "models.toml"\n' + cortex
    path = tmp / "cortex.toml"
    path.write_text(cortex)
    return path


def test_defaults_front_local_neuron():
    s = load_settings(None, env={})
    assert [(n.name, n.endpoint) for n in s.neurons] == [("local", DEFAULT_NEURON)]
    assert s.gateway.listen == "0.0.0.0:31313" and s.gateway.metrics_listen == "0.0.0.0:31314"
    assert s.eviction.strategy is EvictionStrategy.LRU and s.gateway.api_keys == ()


def test_examples_parse():
    s = load_settings(REPO / "examples" / "cortex.toml", env={})
    assert [n.name for n in s.neurons] == ["beast", "bolt"]
    big = s.profile("qwen3.6-27b")
    assert big.pinned and big.neurons == ("beast",) and big.memory_bytes == 60 << 30
    assert s.aliases()["tiny"] == "qwen3.6-tiny"
    with pytest.raises(ValidationError, match="frozen"):
        s.gateway.listen = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cortex", "models", "file", "key", "reason"),
    [
        ("[gateway\nlisten=1", None, "cortex.toml", "-", "invalid TOML"),
        ("[gateway]\nbogus = 1\n", None, "cortex.toml", "gateway.bogus", "unknown key"),
        ('[gateway]\npoll_interval = "fast"\n', None, "cortex.toml", "gateway.poll_interval", "fast"),
        ('[gateway]\nlisten = "nowhere"\n', None, "cortex.toml", "gateway.listen", "host:port"),
        ('[eviction]\nstrategy = "random"\n', None, "cortex.toml", "eviction.strategy", "random"),
        (
            '[[neurons]]\nname = "a"\nendpoint = "ftp://x"\n',
            None,
            "cortex.toml",
            "neurons[0].endpoint",
            "http",
        ),
        ('[[neurons]]\nname = "a"\n', None, "cortex.toml", "neurons[0].endpoint", "missing"),
        (
            '[[neurons]]\nname="a"\nendpoint="http://h:1"\n[[neurons]]\nname="a"\nendpoint="http://h:2"\n',
            None,
            "cortex.toml",
            "neurons[1].name",
            "duplicate",
        ),
        (
            "",
            '[[models]]\nid = "m"\nmemory_gb = -1\n',
            "models.toml",
            "models[0].memory_gb",
            "greater than 0",
        ),
        ("", '[[models]]\nid = "m"\nneurons = ["ghost"]\n', "models.toml", "models[0].neurons[0]", "ghost"),
        (
            "",
            '[[models]]\nid = "m"\naliases = ["x"]\n[[models]]\nid = "n"\naliases = ["x"]\n',
            "models.toml",
            "models[1].aliases[0]",
            "already names",
        ),
        ("", '[[models]]\nid = "m"\npinned = "yes please"\n', "models.toml", "models[0].pinned", "bool"),
        ("", '[models]\nid = "m"\n', "models.toml", "models", "list"),
        ("", 'colour = "blue"\n', "models.toml", "colour", "unknown key"),
    ],
)
def test_bad_config_names_file_key_reason(tmp_path, cortex, models, file, key, reason):
    path = write(tmp_path, cortex, models)
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={})
    err = info.value
    assert err.file.endswith(file), err
    assert err.key == key, err
    assert reason.lower() in err.reason.lower(), err


def test_missing_models_file(tmp_path):
    path = write(tmp_path, 'models_config = "nope.toml"\n')
    with pytest.raises(ConfigError, match="models_config: file not found") as info:
        load_settings(path, env={})
    assert info.value.file.endswith("cortex.toml")


def test_env_overrides(tmp_path):
    path = write(tmp_path, '[gateway]\nlisten = "127.0.0.1:1"\n')
    env = {
        "CORTEX_LISTEN": "127.0.0.1:2",
        "CORTEX_API_KEYS": "k1, k2",
        "CORTEX_EVICTION_STRATEGY": "priority",
        "CORTEX_TIMEOUT_READ": "7.5",
        "CORTEX_NEURONS": "x=http://h:1,http://h:2",
    }
    s = load_settings(path, env=env)
    assert s.gateway.listen == "127.0.0.1:2" and s.gateway.api_keys == ("k1", "k2")
    assert s.eviction.strategy is EvictionStrategy.PRIORITY and s.timeouts.read == 7.5
    assert [(n.name, n.endpoint) for n in s.neurons] == [("x", "http://h:1"), ("n1", "http://h:2")]


def test_env_config_path_and_bad_env_value(tmp_path):
    path = write(tmp_path, "")
    assert load_settings(None, env={"CORTEX_CONFIG": str(path)}).gateway.listen == "0.0.0.0:31313"
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={"CORTEX_POLL_INTERVAL": "-1"})
    assert info.value.file == "environment variable CORTEX_POLL_INTERVAL"
    assert info.value.key == "gateway.poll_interval"


def test_serve_reports_config_error_and_exits(tmp_path):
    path = write(tmp_path, "[gateway]\nbogus = 1\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "cortex.toml: gateway.bogus: unknown key" in proc.stderr
