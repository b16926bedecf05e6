"""Up-front memory estimates for a checkpoint (weights + cache) and the device-memory budget.

Weights are counted from the safetensors headers (exact element counts, no tensor data read) at the dtype they
will be loaded in; the cache from the config, the slot count and the context limit. Both are known before any
device memory is touched, so a load that cannot fit is refused (507) before it starts.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_ST_BYTES = {
    "F64": 8,
    "F32": 4,
    "BF16": 2,
    "F16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


class CheckpointLayoutError(ValueError):
    """A checkpoint directory whose safetensors files cannot be read for an estimate."""


@dataclass(frozen=True)
class MemoryEstimate:
    params_bytes: int
    cache_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.params_bytes + self.cache_bytes


def _header(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise CheckpointLayoutError(f"{path}: truncated safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n <= 0 or n > 100 * 1024 * 1024:
                raise CheckpointLayoutError(f"{path}: implausible safetensors header length {n}")
            body = f.read(n)
        return json.loads(body)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointLayoutError(f"{path}: cannot read safetensors header ({e})") from e


_FLOATS = ("F32", "BF16", "F16", "F64")  # cast to the load dtype; other tensors keep their stored width


def weight_table(ckpt_dir: Path, dtype: str, skip_prefixes: tuple[str, ...] = ()) -> list[tuple[str, int, int]]:
    """``(name, ndim, bytes at the load dtype)`` per checkpoint tensor (but ``skip_prefixes``), from the
    safetensors headers only."""
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointLayoutError(f"{ckpt_dir}: no *.safetensors files")
    target = DTYPE_BYTES[dtype]
    out = []
    for f in files:
        for name, meta in _header(f).items():
            if name == "__metadata__" or name.startswith(skip_prefixes):
                continue
            count = 1
            for dim in meta["shape"]:
                count *= int(dim)
            st = meta["dtype"]
            out.append((name, len(meta["shape"]), count * (target if st in _FLOATS else _ST_BYTES.get(st, 4))))
    return out


def params_bytes(ckpt_dir: Path, dtype: str, skip_prefixes: tuple[str, ...] = ()) -> int:
    """Bytes of every tensor in the checkpoint (but ``skip_prefixes``), floating tensors counted at ``dtype``."""
    return sum(nbytes for _, _, nbytes in weight_table(ckpt_dir, dtype, skip_prefixes))


def cache_bytes_from_config(cfg, slots: int, context: int, dtype: str) -> int:
    """Slot-pool bytes for the hybrid cache; the engine's own ``cache_bytes`` is preferred when present."""
    try:
        from cortex_jax.engine.cache import cache_bytes  # type: ignore[attr-defined]
    except ImportError:
        cache_bytes = None
    if cache_bytes is not None:
        try:
            return int(cache_bytes(cfg.text, slots, context, dtype))
        except TypeError:
            pass  # signature differs: fall back to the formula below
    t = cfg.text
    item = DTYPE_BYTES[dtype]
    n_full = len(t.full_attention_layers)
    n_lin = len(t.linear_attention_layers)
    kv = n_full * 2 * slots * context * t.num_key_value_heads * t.head_dim * item
    conv = n_lin * slots * (t.linear_conv_kernel_dim - 1) * t.conv_dim * item
    rec = n_lin * slots * t.linear_num_value_heads * t.linear_key_head_dim * t.linear_value_head_dim * 4
    return kv + conv + rec


def sampler_bytes(cfg, slots: int) -> int:
    """The engine's per-slot penalty state: an int32 output histogram and a bool prompt mask over the vocab."""
    return slots * cfg.text.vocab_size * (4 + 1) + slots * 8


def estimate(ckpt_dir: Path, cfg, slots: int, context: int, dtype: str,
             skip_prefixes: tuple[str, ...] = ()) -> MemoryEstimate:
    cache = cache_bytes_from_config(cfg, slots, context, dtype) + sampler_bytes(cfg, slots)
    return MemoryEstimate(params_bytes(ckpt_dir, dtype, skip_prefixes), cache)


def host_memory_available() -> int | None:
    """MemAvailable from /proc/meminfo (CPU backends keep arrays in host memory)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
