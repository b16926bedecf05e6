"""Gateway settings: `cortex.toml` + `models.toml` + `CORTEX_*` environment → one frozen `Settings`.

Parsed once at start-up; nothing changes them afterwards (runtime state such as pins lives in the services).
Every problem is a `ConfigError` naming the file (or environment variable), the key and the reason. With no
config at all the gateway fronts one neuron at http://127.0.0.1:13131.

Environment overrides (applied on top of the files): `CORTEX_<KEY>` for keys of `[gateway]` (e.g.
`CORTEX_LISTEN`, `CORTEX_API_KEYS=k1,k2`, `CORTEX_POLL_INTERVAL`), `CORTEX_EVICTION_<KEY>`,
`CORTEX_TIMEOUT_<KEY>`, `CORTEX_MODELS_CONFIG`, and
`CORTEX_NEURONS=name=http://host:13131,http://other:13131` (replaces `[[neurons]]`).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_NEURON = "http://127.0.0.1:13131"
GIB = 1 << 30


class ConfigError(ValueError):
    """A configuration problem: which file (or env var), which key, and why."""

    def __init__(self, file: str, key: str, reason: str):
        self.file, self.key, self.reason = file, key, reason
        super().__init__(f"{file}: {key}: {reason}")


class EvictionStrategy(StrEnum):
    LRU = "lru"
    PRIORITY = "priority"


class RoutingPolicyName(StrEnum):
    LEAST_LOADED = "least_loaded"
    ROUND_ROBIN = "round_robin"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected 'host:port', got {value!r}")
    return value


class GatewaySettings(_Frozen):
    """`[gateway]`: listeners, auth, limits and fleet-polling knobs."""

    listen: str = "0.0.0.0:31313"
    metrics_listen: str = "0.0.0.0:31314"
    api_keys: tuple[str, ...] = ()
    max_request_bytes: int = Field(32 * 1024 * 1024, gt=0)
    poll_interval: float = Field(2.0, gt=0)
    failure_threshold: int = Field(3, ge=1)
    load_wait_seconds: float = Field(600.0, gt=0)
    retries: int = Field(2, ge=0)
    routing: RoutingPolicyName = RoutingPolicyName.LEAST_LOADED
    max_connections: int = Field(1000, ge=1)
    max_keepalive_connections: int = Field(200, ge=0)

    @field_validator("listen", "metrics_listen")
    @classmethod
    def _listen(cls, v: str, info) -> str:
        return v if (v == "" and info.field_name == "metrics_listen") else _host_port(v)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not k.strip() for k in v):
            raise ValueError("API keys must be non-empty strings")
        return v


class EvictionSettings(_Frozen):
    """`[eviction]`: which models make room for a cold load, and when to defragment a node."""

    strategy: EvictionStrategy = EvictionStrategy.LRU
    defrag_after_cycles: int = Field(50, ge=0)


class Timeouts(_Frozen):
    """`[timeouts]` in seconds: httpx phases for proxied calls, plus model loads and health polls."""

    connect: float = Field(5.0, gt=0)
    read: float = Field(600.0, gt=0)
    write: float = Field(60.0, gt=0)
    pool: float = Field(30.0, gt=0)
    load: float = Field(1800.0, gt=0)
    health: float = Field(5.0, gt=0)


class NeuronConfig(_Frozen):
    """One `[[neurons]]` entry."""

    name: str = Field(min_length=1)
    endpoint: str

    @field_validator("endpoint")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"expected an http(s) URL, got {v!r}")
        return v.rstrip("/")


class ModelProfile(_Frozen):
    """One `[[models]]` placement profile from models.toml."""

    id: str = Field(min_length=1)
    neurons: tuple[str, ...] | None = None
    memory_gb: float | None = Field(None, gt=0)
    tensor_parallel: int | None = Field(None, ge=1)
    priority: int = 0
    pinned: bool = False
    aliases: tuple[str, ...] = ()

    @property
    def memory_bytes(self) -> int | None:
        """`memory_gb` in bytes (GiB, 2**30), or None when not given."""
        return None if self.memory_gb is None else int(self.memory_gb * GIB)


class Settings(_Frozen):
    """Everything the gateway reads at start-up."""

    models_config: str | None = None
    gateway: GatewaySettings = GatewaySettings()
    eviction: EvictionSettings = EvictionSettings()
    timeouts: Timeouts = Timeouts()
    neurons: tuple[NeuronConfig, ...] = (NeuronConfig(name="local", endpoint=DEFAULT_NEURON),)
    models: tuple[ModelProfile, ...] = ()

    def profile(self, model_id: str) -> ModelProfile | None:
        """The placement profile of a canonical model id."""
        return next((p for p in self.models if p.id == model_id), None)

    def aliases(self) -> dict[str, str]:
        """alias → canonical id, from the profiles."""
        return {a: p.id for p in self.models for a in p.aliases}


_SECTIONS = {"gateway": GatewaySettings, "eviction": EvictionSettings, "timeouts": Timeouts}
_ENV_PREFIX = {"gateway": "CORTEX_", "eviction": "CORTEX_EVICTION_", "timeouts": "CORTEX_TIMEOUT_"}


def load_settings(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read `path` (cortex.toml; None → `CORTEX_CONFIG` or built-in defaults), its models.toml and the env."""
    env = os.environ if env is None else env
    path = path or env.get("CORTEX_CONFIG") or None
    raw: dict[str, Any] = {}
    origin: dict[str, str] = {}  # dotted key → where it came from, for error messages
    main_file = "<defaults>"
    if path is not None:
        main_file = str(path)
        raw = _read_toml(Path(path))
    if "models" in raw:
        raise ConfigError(main_file, "models", "[[models]] belongs in the file named by models_config")
    _apply_env(raw, env, origin)
    models_file: str | None = None
    models_raw: dict[str, Any] = {}
    if raw.get("models_config"):
        base = Path(path).parent if path is not None else Path.cwd()
        mpath = base / str(raw["models_config"])
        models_file = str(mpath)
        if not mpath.is_file():
            src = origin.get("models_config", main_file)
            raise ConfigError(src, "models_config", f"file not found: {mpath}")
        models_raw = _read_toml(mpath)
        unknown = sorted(set(models_raw) - {"models"})
        if unknown:
            raise ConfigError(models_file, unknown[0], "unknown key (expected only [[models]])")
    data = dict(raw)
    if "models" in models_raw:
        data["models"] = models_raw["models"]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = _dotted(err["loc"])
        file = origin.get(key) or (models_file if key.startswith("models") and models_file else main_file)
        raise ConfigError(file, key, _reason(err)) from None
    _cross_check(settings, main_file, models_file or main_file)
    return settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "-", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "-", f"invalid TOML: {exc}") from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], origin: dict[str, str]) -> None:
    if "CORTEX_MODELS_CONFIG" in env:
        raw["models_config"] = env["CORTEX_MODELS_CONFIG"]
        origin["models_config"] = "environment variable CORTEX_MODELS_CONFIG"
    for section, model in _SECTIONS.items():
        for field in model.model_fields:
            var = _ENV_PREFIX[section] + field.upper()
            if var not in env:
                continue
            value: Any = env[var]
            if model.model_fields[field].annotation == tuple[str, ...]:
                value = [v.strip() for v in value.split(",") if v.strip()]
            sect = raw.setdefault(section, {})
            if not isinstance(sect, dict):
                raise ConfigError("cortex.toml", section, "must be a table")
            sect[field] = value
            origin[f"{section}.{field}"] = f"environment variable {var}"
    if "CORTEX_NEURONS" in env:
        neurons = []
        for i, item in enumerate(x.strip() for x in env["CORTEX_NEURONS"].split(",") if x.strip()):
            name, sep, url = item.partition("=")
            neurons.append({"name": name, "endpoint": url} if sep else {"name": f"n{i}", "endpoint": item})
            for key in ("name", "endpoint"):
                origin[f"neurons[{i}].{key}"] = "environment variable CORTEX_NEURONS"
        raw["neurons"] = neurons


def _dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "-"


def _reason(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] in ("tuple_type", "list_type"):
        return f"expected an array (list), got {err.get('input')!r}"
    if err["type"] in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a table, got {err.get('input')!r}"
    return f"{err['msg']} (got {err.get('input')!r})"


def _cross_check(s: Settings, main_file: str, models_file: str) -> None:
    names = [n.name for n in s.neurons]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise ConfigError(main_file, f"neurons[{i}].name", f"duplicate neuron name {name!r}")
    seen: dict[str, str] = {}
    for i, p in enumerate(s.models):
        for j, node in enumerate(p.neurons or ()):
            if node not in names:
                raise ConfigError(models_file, f"models[{i}].neurons[{j}]",
                                  f"unknown neuron {node!r} (known: {', '.join(names)})")
        for k, ident in enumerate((p.id, *p.aliases)):
            key = f"models[{i}].id" if k == 0 else f"models[{i}].aliases[{k - 1}]"
            if ident in seen:
                raise ConfigError(models_file, key, f"{ident!r} already names model {seen[ident]!r}")
            seen[ident] = p.id
