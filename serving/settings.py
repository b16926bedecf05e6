"""Frozen neuron settings from defaults < TOML file < ``NEURON_*`` environment < CLI flags.

Every setting has one key, used in all three sources: TOML ``slots = 4`` (top level or under ``[neuron]``),
env ``NEURON_SLOTS=4``, flag ``--slots 4``. Models are ``[models]`` ``id = "path"`` in TOML,
``NEURON_MODELS="a=/p/a,b=/p/b"`` and repeated ``--model a=/p/a``. Errors name the source, the key and the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EMBEDDED_ID = "qwen3.6-tiny"  # mirrors models.qwen36.embedded.EMBEDDED_MODEL_ID (no JAX import here)
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOG_FORMATS = ("json", "text")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class SettingsError(ValueError):
    """A setting that cannot be used; the message names where it came from, the key and why."""


@dataclass(frozen=True)
class Settings:
    """Everything the daemon reads at start-up. Nothing changes it afterwards."""

    host: str = "127.0.0.1"
    port: int = 13131
    node_name: str = field(default_factory=socket.gethostname)
    models: Mapping[str, Path] = field(default_factory=dict)  # id -> HF checkpoint directory
    models_dir: Path | None = None  # every sub-directory with a config.json is a model, id = its name
    embedded: bool | None = None  # serve qwen3.6-tiny; None = only when no other model is configured
    load: tuple[str, ...] | None = None  # loaded at start; None = the embedded model when it is served
    slots: int = 8  # concurrent sequences per model (decode batch)
    queue: int = 64  # admission queue per model beyond the slots
    context_limit: int = 4096  # tokens per sequence (prompt + completion); capped by the model's own limit
    tensor_parallel: int = 1  # default TP size for loads that do not name one
    data_parallel: int = 1  # default DP size (slot pool split over dp; must divide ``slots``)
    parallel: Mapping[str, Any] = field(default_factory=dict)  # id -> MeshSpec: per-model (dp, tp)
    prefill_buckets: tuple[int, ...] = (64, 128, 256, 512)  # padded prompt-chunk lengths (one compile each)
    dtype: str = "auto"  # weights/cache dtype: auto = bfloat16 on accelerators, float32 on CPU
    memory_budget_gb: float | None = None  # cap on device memory for models; None = what the devices report
    max_request_bytes: int = 32 * 1024 * 1024
    max_images: int = 8  # per request
    max_image_bytes: int = 20 * 1024 * 1024  # per decoded image
    image_fetch_hosts: tuple[str, ...] = ()  # exact hosts whose image URLs the neuron fetches; () = refuse all
    image_fetch_timeout_s: float = 10.0  # whole fetch of one remote image
    image_fetch_allow_http: bool = False  # also fetch plain http from the allow-listed hosts (else https only)
    max_tokens_default: int = 1024  # when a request sets no max_tokens (capped by the context left)
    max_n: int = 8  # largest accepted ``n``
    keepalive_s: float = 5.0  # SSE comment interval while no token has come yet
    load_wait_s: float = 300.0  # a request for a model that is loading waits this long for it
    auto_load: bool = False  # a request for an available (not loaded) model loads it instead of 503
    drain_timeout_s: float = 60.0  # SIGTERM and unload(drain): longest wait for in-flight requests
    warmup: bool = False  # compile every prefill bucket and decode variant at load (slower load, no cold request)
    shard_vision: bool = False  # vision tower tensor parallel over tp instead of replicated (docs/sharding.md)
    compile_cache_dir: Path | None = None  # JAX persistent compilation cache (fast restarts)
    log_level: str = "INFO"
    log_format: str = "json"

    @property
    def serves_embedded(self) -> bool:
        if self.embedded is not None:
            return self.embedded
        return not self.models and self.models_dir is None

    @property
    def load_at_start(self) -> tuple[str, ...]:
        if self.load is not None:
            return self.load
        return (EMBEDDED_ID,) if self.serves_embedded else ()

    def mesh_for(self, model_id: str) -> Any:
        """The (dp, tp) a load of ``model_id`` uses when the request names none: per-model, else the defaults."""
        from serving.parallel import MeshSpec

        return self.parallel.get(model_id) or MeshSpec(self.data_parallel, self.tensor_parallel)

    @property
    def memory_budget_bytes(self) -> int | None:
        return None if self.memory_budget_gb is None else int(self.memory_budget_gb * 1024**3)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SCALAR_TYPES: dict[str, type] = {
    "host": str,
    "port": int,
    "node_name": str,
    "slots": int,
    "queue": int,
    "context_limit": int,
    "tensor_parallel": int,
    "data_parallel": int,
    "dtype": str,
    "memory_budget_gb": float,
    "max_request_bytes": int,
    "max_images": int,
    "max_image_bytes": int,
    "max_tokens_default": int,
    "max_n": int,
    "keepalive_s": float,
    "load_wait_s": float,
    "auto_load": bool,
    "drain_timeout_s": float,
    "log_level": str,
    "log_format": str,
    "embedded": bool, "warmup": bool, "shard_vision": bool,
    "image_fetch_timeout_s": float, "image_fetch_allow_http": bool,
}


def _coerce(key: str, value: Any, where: str) -> Any:
    """Parse one raw value (TOML value or string from env/CLI) into the setting's type."""
    try:
        if key == "models":
            return _parse_models(value)
        if key == "parallel":
            return _parse_parallel(value)
        if key == "prefill_buckets":
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(sorted(int(x) for x in items))
        if key in ("load", "image_fetch_hosts"):
            items = value.split(",") if isinstance(value, str) else list(value)
            out = tuple(str(x).strip() for x in items if str(x).strip())
            return tuple(x.lower() for x in out) if key == "image_fetch_hosts" else out
        if key in ("models_dir", "compile_cache_dir"):
            return Path(str(value)).expanduser()
        if key == "listen":
            host, _, port = str(value).rpartition(":")
            if not host or not port:
                raise ValueError("expected HOST:PORT")
            return host.strip("[]"), int(port)
        typ = _SCALAR_TYPES[key]
        if typ is bool:
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if typ is int and isinstance(value, bool | float):
            raise ValueError("expected an integer")
        return typ(value)
    except (ValueError, TypeError, AttributeError) as e:
        raise SettingsError(f"{where}: {key}: invalid value {value!r} ({e})") from None


def _id_pairs(value: Any, what: str) -> list[tuple[str, Any]]:
    """``{id: value}`` (TOML) or ``"a=x,b=y"`` / ``["a=x"]`` (env / flags) as ``(id, value)`` pairs."""
    if isinstance(value, Mapping):
        return [(str(k), v) for k, v in value.items()]
    items = value.split(",") if isinstance(value, str) else list(value)
    pairs = []
    for item in items:
        mid, sep, rest = str(item).partition("=")
        if not sep or not mid.strip() or not rest.strip():
            raise ValueError(f"expected ID={what}, got {item!r}")
        pairs.append((mid.strip(), rest.strip()))
    return pairs


def _parse_models(value: Any) -> dict[str, Path]:
    return {k: Path(str(v)).expanduser() for k, v in _id_pairs(value, "PATH")}


def _parse_parallel(value: Any) -> dict[str, Any]:
    """``{id: "DPxTP" | TP | {tensor_parallel, data_parallel}}`` (TOML) or ``"a=2x4,b=4"`` (env / flags)."""
    from serving.parallel import parse_mesh

    return {k: parse_mesh(dict(v) if isinstance(v, Mapping) else v) for k, v in _id_pairs(value, "DPxTP")}


def _merge(into: dict[str, Any], raw: Mapping[str, Any], where: str) -> None:
    for key, value in raw.items():
        if key not in _FIELDS and key != "listen":
            raise SettingsError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(_FIELDS))}, listen)")
        parsed = _coerce(key, value, where)
        if key == "listen":
            into["host"], into["port"] = parsed
        elif key in ("models", "parallel"):
            into[key] = {**into.get(key, {}), **parsed}
        else:
            into[key] = parsed


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise SettingsError(f"{path}: not valid TOML ({e})") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "neuron" and isinstance(value, Mapping):
            flat.update(value)
        else:
            flat[key] = value
    base = path.parent
    if isinstance(flat.get("models"), Mapping):  # relative model paths are relative to the config file
        flat["models"] = {k: str(base / Path(str(v)).expanduser()) for k, v in flat["models"].items()}
    for key in ("models_dir", "compile_cache_dir"):
        if isinstance(flat.get(key), str):
            flat[key] = str(base / Path(flat[key]).expanduser())
    return flat


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in env.items():
        if name.startswith("NEURON_") and name != "NEURON_CONFIG":
            out[name[len("NEURON_") :].lower()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cortex-neuron",
        description="The cortex-jax neuron: serve Qwen3.6 models over HTTP on this host.",
    )
    p.add_argument("--config", type=Path, help="TOML config file (also NEURON_CONFIG)")
    p.add_argument("--listen", help="HOST:PORT")
    p.add_argument(
        "--model", dest="models", action="append", metavar="ID=PATH", help="servable model (repeat)"
    )
    p.add_argument("--parallel", action="append", metavar="ID=DPxTP",
                   help="per-model mesh, e.g. big=2x4 or big=4 (tp only); repeat")
    p.add_argument("--load", action="append", metavar="ID", help="load at start (repeat or comma-separated)")
    p.add_argument("--embedded", dest="embedded", action="store_const", const="true",
                   help="also serve the embedded qwen3.6-tiny model next to configured ones")
    p.add_argument(
        "--no-embedded",
        dest="embedded",
        action="store_const",
        const="false",
        help="do not serve the embedded qwen3.6-tiny model",
    )
    for key in sorted(set(_SCALAR_TYPES) - {"embedded"}) + ["models_dir", "compile_cache_dir", "prefill_buckets",
                                                                "image_fetch_hosts"]:
        flag = "--" + key.replace("_", "-")
        p.add_argument(flag, dest=key, metavar=key.upper(), help=f"see docs/neuron.md ({key})")
    return p


def load_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Parse CLI flags (``argv``), the environment and the config file into a validated ``Settings``."""
    env = os.environ if env is None else env
    args = vars(build_parser().parse_args(list(argv) if argv is not None else None))
    config = args.pop("config", None) or env.get("NEURON_CONFIG")
    values: dict[str, Any] = {}
    if config:
        path = Path(config).expanduser()
        _merge(values, _from_toml(path), str(path))
    _merge(values, _from_env(env), "environment")
    cli = {k: v for k, v in args.items() if v is not None}
    if "load" in cli:
        cli["load"] = ",".join(cli["load"])
    if "parallel" in cli:
        cli["parallel"] = ",".join(cli["parallel"])
    _merge(values, cli, "command line")
    return validate(Settings(**values))


def validate(s: Settings) -> Settings:
    def bad(key: str, why: str) -> SettingsError:
        return SettingsError(f"settings: {key}: {why}")

    for key in ("slots", "queue", "context_limit", "tensor_parallel", "data_parallel", "max_request_bytes",
                "max_image_bytes", "max_tokens_default", "max_n"):
        minimum = 0 if key == "queue" else 1
        if getattr(s, key) < minimum:
            raise bad(key, f"must be >= {minimum}, got {getattr(s, key)}")
    if s.slots % s.data_parallel:
        raise bad("data_parallel", f"must divide slots ({s.slots}): the slot pool is split over dp, got "
                  f"{s.data_parallel}")
    for mid, mesh in s.parallel.items():
        if s.slots % mesh.dp:
            raise bad(f"parallel.{mid}", f"data_parallel={mesh.dp} must divide slots ({s.slots})")
    if not 0 <= s.port <= 65535:
        raise bad("port", f"must be 0..65535, got {s.port}")
    if s.dtype not in DTYPES:
        raise bad("dtype", f"must be one of {DTYPES}, got {s.dtype!r}")
    if s.log_format not in LOG_FORMATS:
        raise bad("log_format", f"must be one of {LOG_FORMATS}, got {s.log_format!r}")
    if s.log_level.upper() not in LOG_LEVELS:
        raise bad("log_level", f"must be one of {LOG_LEVELS} (any case), got {s.log_level!r}")
    if s.memory_budget_gb is not None and s.memory_budget_gb <= 0:
        raise bad("memory_budget_gb", "must be > 0")
    if not s.prefill_buckets or min(s.prefill_buckets) < 1:
        raise bad("prefill_buckets", f"must be positive token counts, got {s.prefill_buckets}")
    if s.max_images < 0:
        raise bad("max_images", "must be >= 0")
    for key in ("keepalive_s", "image_fetch_timeout_s"):
        if getattr(s, key) <= 0:
            raise bad(key, "must be > 0")
    if s.models_dir is not None and not s.models_dir.is_dir():
        raise bad("models_dir", f"{s.models_dir} is not a directory")
    return s
