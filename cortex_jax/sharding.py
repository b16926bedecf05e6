"""Logical axis names → mesh axes (one rules table), the single param-creation helper, state shardings,
activation constraints and a replication guard.

Modules never name mesh axes. They tag every parameter, cache and activation dimension with a *logical* axis
(``"embed"``, ``"heads"``, ...) through :func:`param` and :class:`Sharder`; :class:`AxisRules` decides which
mesh axis (``"dp"``/``"tp"``) each logical axis maps to, and :func:`rules_for` fits that table to a model's head
counts and a mesh (docs/sharding.md has the full table and the decisions behind it).

Logical axes used by the Qwen3.6 model:

=============  =====  ==========================================================================
axis           mesh   dimension
=============  =====  ==========================================================================
batch          dp     batch rows / cache slots
embed          —      model width D (replicated: activations stay whole between blocks)
heads          tp     attention query heads (q_proj/o_proj columns, including the gate half)
kv_heads       tp     attention KV heads; replicated (None) by :func:`rules_for` when tp does not divide Hkv
ffn            tp     MLP intermediate columns
vocab          tp     embedding / lm_head rows
gdn_v_heads    tp     Gated DeltaNet value heads (z, b, a, A_log, dt_bias, out_proj rows, recurrent state)
gdn_conv       tp     Gated DeltaNet conv channels, stored in key-head-group order (q_h|k_h|v_h per key head),
                      and the key-head axis of the grouped q/k/v views: a shard holds whole key heads together
                      with their value heads
head_dim       —      per-head feature dims
=============  =====  ==========================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
Axes = tuple[str | None, ...]

# The metadata key under which :func:`param` records logical axes. Deliberately our own key, not flax's
# ``sharding`` / ``sharding_names`` / ``out_sharding`` (renamed twice across 0.11–0.12, google/flax#5215):
# flax 0.12.x applies ``out_sharding`` *eagerly* at construction (``eager_sharding`` defaults to True), which
# needs an active mesh and would place each weight before the loader can. We place arrays ourselves
# (state_shardings), so the flax key is never needed and no flax version switch exists elsewhere.
LOGICAL_AXES_KEY = "logical_axes"


@dataclass(frozen=True)
class AxisRules:
    """Logical axis → mesh axis (or ``None`` = replicated). A mesh axis may appear once per tensor."""

    batch: MeshAxes = "dp"
    embed: MeshAxes = None
    heads: MeshAxes = "tp"
    kv_heads: MeshAxes = "tp"
    ffn: MeshAxes = "tp"
    vocab: MeshAxes = "tp"
    gdn_v_heads: MeshAxes = "tp"
    gdn_conv: MeshAxes = "tp"
    head_dim: MeshAxes = None

    def replace(self, **changes: Any) -> AxisRules:
        return dataclasses.replace(self, **changes)


def spec(axes: Axes, rules: AxisRules) -> P:
    """PartitionSpec for a tensor whose dimensions carry logical ``axes`` (None = replicated dim)."""
    phys = []
    for a in axes:
        if a is None:
            phys.append(None)
        elif not hasattr(rules, a):
            known = [f.name for f in dataclasses.fields(rules)]
            raise ValueError(f"unknown logical axis {a!r} in {axes}; known: {known}")
        else:
            phys.append(getattr(rules, a))
    flat = jax.tree.leaves(phys)
    if len(flat) != len(set(flat)):
        raise ValueError(f"mesh axis reused within one tensor: {axes} -> {phys}")
    return P(*phys)


Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]


def param(
    rngs: nnx.Rngs | None,
    init: Initializer,
    shape: Sequence[int],
    axes: Axes,
    dtype: Any = jnp.float32,
) -> nnx.Param:
    """Create an ``nnx.Param`` of ``shape``/``dtype`` initialised by ``init(key, shape, dtype)``, recording
    its logical ``axes`` in metadata. The one place model code creates (shardable) parameters."""
    shape = tuple(int(s) for s in shape)
    if len(axes) != len(shape):
        raise ValueError(f"param of shape {shape} got {len(axes)} logical axes {axes}")
    key = rngs.params() if rngs is not None else jax.random.key(0)
    return nnx.Param(init(key, shape, dtype), **{LOGICAL_AXES_KEY: tuple(axes)})


def logical_axes(var: Any) -> Axes | None:
    """The logical axes recorded by :func:`param` on a Variable (None if it has none)."""
    get = getattr(var, "get_metadata", None)
    if get is None:
        return None
    meta = get()
    return meta.get(LOGICAL_AXES_KEY) if isinstance(meta, dict) else None


def fit_to_mesh(shape: Sequence[int], pspec: P, mesh: Mesh) -> P:
    """Drop mesh axes that do not divide their dimension (replicate instead of failing on tiny models)."""
    out = []
    for dim, ax in zip(shape, tuple(pspec) + (None,) * (len(shape) - len(pspec)), strict=False):
        names = () if ax is None else ((ax,) if isinstance(ax, str) else tuple(ax))
        size = 1
        for n in names:
            size *= mesh.shape[n]
        out.append(ax if dim % size == 0 else None)
    return P(*out)


def state_shardings(abstract_state: Any, mesh: Mesh, rules: AxisRules) -> Any:
    """A pytree like ``abstract_state`` (an ``nnx.State`` of abstract Variables) of ``NamedSharding``s.

    Variables without logical axes are replicated. A mesh axis that does not divide its dimension is dropped
    for that tensor (replicated), so tiny test models load on any mesh; :func:`assert_sharded` catches the
    cases where that matters.
    """

    def one(var: Any) -> NamedSharding:
        axes = logical_axes(var)
        shape = var.shape if hasattr(var, "shape") else var.get_value().shape
        if axes is None:
            return NamedSharding(mesh, P())
        return NamedSharding(mesh, fit_to_mesh(shape, spec(axes, rules), mesh))

    return jax.tree.map(one, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def assert_sharded(state: Any, min_bytes: int = 1 << 20) -> None:
    """Fail loudly if a parameter of at least ``min_bytes`` is fully replicated on a multi-device mesh."""
    offenders = []
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if not isinstance(leaf, jax.Array) or leaf.nbytes < min_bytes:
            continue
        sh = leaf.sharding
        if len(sh.device_set) > 1 and sh.is_fully_replicated:
            offenders.append(f"{jax.tree_util.keystr(path)} {leaf.shape} {leaf.dtype} ({leaf.nbytes} B)")
    if offenders:
        raise AssertionError("large parameters replicated on every device:\n  " + "\n  ".join(offenders))
