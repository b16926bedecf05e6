"""Mesh choice for a model: (dp, tp) parsing, validation against the host and the model, and per-device memory.

A model is served on a ``dp × tp`` mesh over the **first dp·tp local devices** (``engine_factory.build``).
Validation happens before any device memory is touched, in this order, each failure a 400 naming the field:

1. dp·tp ≤ the local device count (``tensor_parallel`` / ``data_parallel``);
2. ``slots`` divisible by dp (the slot pool's batch is split over dp; a remainder would silently replicate it);
3. the model's head counts fit tp (``cortex_jax.sharding.rules_for`` on an abstract mesh: a tp that would split
   a query head, a GDN key-head group, an FFN column or a vocab row raises ``ValueError``).

No JAX device work here: ``rules_for`` only reads ``mesh.shape``, so a ``jax.sharding.AbstractMesh`` suffices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from serving.memory import DTYPE_BYTES, cache_bytes_from_config, sampler_bytes

_MESH_RE = re.compile(r"^\s*(?:(\d+)\s*[xX×]\s*)?(\d+)\s*$")


class MeshError(ValueError):
    """A (dp, tp) that cannot serve this model on this host; ``param`` is the request field to blame."""

    def __init__(self, message: str, param: str = "tensor_parallel"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class MeshSpec:
    dp: int = 1
    tp: int = 1

    @property
    def size(self) -> int:
        return self.dp * self.tp

    def __str__(self) -> str:
        return f"{self.dp}x{self.tp}"


def parse_mesh(value: Any) -> MeshSpec:
    """``"DPxTP"`` (``"2x4"``), ``"TP"`` / int (dp = 1), or a mapping ``{tensor_parallel, data_parallel}``."""
    if isinstance(value, dict):
        unknown = set(value) - {"tensor_parallel", "data_parallel"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)} (expected tensor_parallel, data_parallel)")
        spec = MeshSpec(int(value.get("data_parallel", 1)), int(value.get("tensor_parallel", 1)))
    elif isinstance(value, int) and not isinstance(value, bool):
        spec = MeshSpec(1, value)
    else:
        m = _MESH_RE.match(str(value))
        if not m:
            raise ValueError(f"expected DPxTP (e.g. 2x4) or TP, got {value!r}")
        spec = MeshSpec(int(m.group(1) or 1), int(m.group(2)))
    if spec.dp < 1 or spec.tp < 1:
        raise ValueError(f"mesh sizes must be >= 1, got {spec}")
    return spec


def check_host(spec: MeshSpec, n_devices: int, slots: int) -> None:
    """Raise ``MeshError`` when the host cannot form the mesh or the slot pool does not split over dp."""
    if spec.size > n_devices:
        param = "tensor_parallel" if spec.tp > n_devices or spec.dp == 1 else "data_parallel"
        raise MeshError(
            f"data_parallel={spec.dp} × tensor_parallel={spec.tp} needs {spec.size} devices but this host "
            f"has {n_devices} local device(s)", param)
    if slots % spec.dp:
        raise MeshError(f"data_parallel={spec.dp} must divide the slot count ({slots}): the slot pool's batch "
                        f"is split over dp", "data_parallel")


def _rules(text_cfg: Any, spec: MeshSpec) -> Any:
    from jax.sharding import AbstractMesh

    from cortex_jax.mesh import AXES
    from cortex_jax.sharding import rules_for

    return rules_for(text_cfg, AbstractMesh((spec.dp, spec.tp), AXES))


def check_model(text_cfg: Any, spec: MeshSpec) -> Any:
    """The fitted rules for ``text_cfg`` on a ``spec`` mesh, or ``MeshError`` naming ``tensor_parallel``."""
    try:
        return _rules(text_cfg, spec)
    except ValueError as e:
        raise MeshError(f"tensor_parallel={spec.tp} does not fit this model ({e}); tensor_parallel sizes "
                        f"that fit it: {valid_tp(text_cfg, max(spec.tp, 8))}", "tensor_parallel") from None


def valid_tp(text_cfg: Any, n_devices: int) -> list[int]:
    """Every tp ≤ ``n_devices`` the model's head counts allow."""
    out = []
    for tp in range(1, n_devices + 1):
        try:
            _rules(text_cfg, MeshSpec(1, tp))
        except ValueError:
            continue
        out.append(tp)
    return out


def valid_meshes(text_cfg: Any, n_devices: int, slots: int) -> list[MeshSpec]:
    """Every (dp, tp) with dp·tp ≤ ``n_devices``, tp fitting the model and dp dividing ``slots``."""
    return [MeshSpec(dp, tp) for tp in valid_tp(text_cfg, n_devices)
            for dp in range(1, n_devices // tp + 1) if slots % dp == 0]


def per_device_bytes(table: list[tuple[str, int, int]], cfg: Any, spec: MeshSpec, slots: int, context: int,
                     dtype: str) -> dict[str, int]:
    """Weights + slot pool held by *one* device of a ``spec`` mesh (an estimate; ``table`` from
    :func:`weight_table`).

    Weights: 1-D tensors (norms, biases, ``A_log``, ``dt_bias``), the vision tower and, when tp does not divide
    the KV heads, ``k_proj``/``v_proj`` are replicated; every other tensor is divided by tp (the rules shard
    one of its dimensions). Cache: KV divided by tp only when tp divides Hkv, GDN state by tp, and all of it by
    dp (slots); the sampler's per-slot histograms by dp.
    """
    t = cfg.text
    kv_split = t.num_key_value_heads % spec.tp == 0
    weights = 0.0
    for name, ndim, size in table:
        replicated = (ndim <= 1 or ".visual." in f".{name}"
                      or (not kv_split and (".k_proj." in name or ".v_proj." in name)))
        weights += size if replicated else size / spec.tp
    cache_total = cache_bytes_from_config(cfg, slots, context, dtype)
    kv = len(t.full_attention_layers) * 2 * slots * context * t.num_key_value_heads * t.head_dim * DTYPE_BYTES[dtype]
    gdn = max(cache_total - kv, 0)
    cache = (kv / (spec.tp if kv_split else 1) + gdn / spec.tp + sampler_bytes(cfg, slots)) / spec.dp
    return {"weights_bytes": int(weights), "cache_bytes": int(cache), "total_bytes": int(weights + cache)}
