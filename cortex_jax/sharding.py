"""Logical axis names → mesh axes (one rules table), the single param-creation helper, state shardings,
activation constraints and a replication guard.

Modules never name mesh axes. They tag every parameter, cache and activation dimension with a *logical* axis
(``"embed"``, ``"heads"``, ...) through :func:`param` and :class:`Sharder`; :class:`AxisRules` decides which
mesh axis (``"dp"``/``"tp"``) each logical axis maps to, and :func:`rules_for` fits that table to a model's
head counts and a mesh (docs/sharding.md has the full table and the decisions behind it).

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
vision_heads   —      vision tower attention heads (qkv columns per head of q, k and v, proj rows); opt-in
vision_ffn     —      vision tower MLP columns (fc1 columns, fc2 rows); opt-in
=============  =====  ==========================================================================

The vision tower is replicated by default (``vision_heads``/``vision_ffn`` map to None);
``AxisRules().with_sharded_vision()`` shards it Megatron-style over tp (docs/sharding.md, "Vision tower").
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
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
    # The vision tower: replicated unless asked for (with_sharded_vision); which is faster is a GPU measurement
    vision_heads: MeshAxes = None
    vision_ffn: MeshAxes = None

    def replace(self, **changes: Any) -> AxisRules:
        return dataclasses.replace(self, **changes)

    def with_sharded_vision(self, axis: MeshAxes = "tp") -> AxisRules:
        """This table with the vision tower tensor-parallel over ``axis``: attention by heads, MLP by columns
        (one all-reduce after ``attn.proj`` and one after ``mlp.linear_fc2`` per block). :func:`rules_for` with
        ``vision_cfg`` replicates either axis again when ``axis`` does not divide its unit count."""
        return self.replace(vision_heads=axis, vision_ffn=axis)


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


def _mesh_size(mesh: Any, axes: MeshAxes) -> int:
    names = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
    return int(np.prod([mesh.shape[n] for n in names])) if names else 1


# Logical axes that may fall back to replication when the mesh does not divide them (by design: the 27B has 4
# KV heads, so tp = 8 keeps every KV head on every device; the vision tower is correct either way); any other
# misfit is a configuration error.
REPLICABLE: tuple[str, ...] = ("kv_heads", "vision_heads", "vision_ffn")


def fit_rules(
    rules: AxisRules, mesh: Any, sizes: Mapping[str, int], replicable: Sequence[str] = REPLICABLE
) -> AxisRules:
    """``rules`` fitted to a model's *unit counts* on ``mesh``.

    ``sizes`` maps a logical axis to the number of indivisible units along it (heads, key-head groups, FFN
    columns, vocab rows); a shard must hold whole units. When the mesh axes of a logical axis do not divide
    its unit count, an axis listed in ``replicable`` is replicated (set to None); any other raises
    ``ValueError`` naming the constraint (e.g. tp = 3 with 16 GDN key heads).
    """
    changes, errors = {}, []
    for name, units in sizes.items():
        axes = getattr(rules, name)
        n = _mesh_size(mesh, axes)
        if n == 1 or units % n == 0:
            continue
        if name in replicable:
            changes[name] = None
        else:
            errors.append(f"{name}: {units} units do not split over mesh axes {axes} of size {n}")
    if errors:
        raise ValueError("mesh does not fit the model: " + "; ".join(errors))
    return rules.replace(**changes) if changes else rules


def axis_sizes(text_cfg: Any) -> dict[str, int]:
    """Unit counts per logical axis of a Qwen3.6-style text config (duck-typed: any config with these fields).

    GDN channels and value heads count *key-head groups* (Hk): a shard must keep each key head together with
    its Hv/Hk value heads, so tp must divide Hk.
    """
    return {
        "heads": text_cfg.num_attention_heads,
        "kv_heads": text_cfg.num_key_value_heads,
        "ffn": text_cfg.intermediate_size,
        "vocab": text_cfg.vocab_size,
        "gdn_conv": text_cfg.linear_num_key_heads,
        "gdn_v_heads": text_cfg.linear_num_key_heads,
    }


def vision_axis_sizes(vision_cfg: Any) -> dict[str, int]:
    """Unit counts of the vision tower's logical axes (duck-typed ``VisionConfig``): heads and FFN columns."""
    return {"vision_heads": vision_cfg.num_heads, "vision_ffn": vision_cfg.intermediate_size}


def rules_for(
    text_cfg: Any, mesh: Any, base: AxisRules | None = None, *, vision_cfg: Any = None
) -> AxisRules:
    """The rules table (``base``, default :class:`AxisRules`) fitted to ``text_cfg``'s head counts on
    ``mesh``: KV heads replicated when tp does not divide Hkv; a mesh that splits a query head, a GDN key-head
    group, an FFN column or a vocab row raises.

    ``vision_cfg``: also fit the vision axes (only matters when ``base`` shards them, see
    :meth:`AxisRules.with_sharded_vision`): ``vision_heads`` is replicated when its mesh axes do not divide the
    vision head count (16 at 27B scale), ``vision_ffn`` when they do not divide the vision FFN width (4304), each
    on its own (a tower may then run its MLP sharded and its attention replicated). Without ``vision_cfg`` the
    vision axes are left as they are. ``text_cfg=None`` fits a vision tower alone."""
    sizes = axis_sizes(text_cfg) if text_cfg is not None else {}
    if vision_cfg is not None:
        sizes.update(vision_axis_sizes(vision_cfg))
    return fit_rules(base or AxisRules(), mesh, sizes)


@dataclass(frozen=True)
class Sharder:
    """Activation sharding constraints from the same rules table: ``x = shard(x, ("batch", None, "heads",
    None))``.

    ``mesh=None`` uses the mesh set by ``jax.set_mesh`` if any. Without a mesh, or on a 1-device mesh, it is
    the identity, so single-device code pays nothing. A mesh axis that does not divide its dimension (batch 1
    on dp = 2) is dropped for that array. Modules hold one as a static attribute (hashable: it is part of the
    graphdef).
    """

    rules: AxisRules = AxisRules()
    mesh: Mesh | None = None

    def __call__(self, x: jax.Array, axes: Axes) -> jax.Array:
        if len(axes) != x.ndim:
            raise ValueError(f"activation of shape {x.shape} got {len(axes)} logical axes {axes}")
        mesh = self.mesh
        if mesh is None:
            mesh = jax.sharding.get_abstract_mesh()
            if mesh.empty or mesh.size == 1:
                return x
            return jax.lax.with_sharding_constraint(x, fit_to_mesh(x.shape, spec(axes, self.rules), mesh))
        if mesh.size == 1:
            return x
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, fit_to_mesh(x.shape, spec(axes, self.rules), mesh))
        )

    def active_mesh(self) -> Any:
        """The mesh constraints apply to (``mesh``, else the one set by ``jax.set_mesh``), or None if there is
        none or it has a single device (nothing to partition)."""
        mesh = self.mesh if self.mesh is not None else jax.sharding.get_abstract_mesh()
        if mesh is None or mesh.empty or mesh.size == 1:
            return None
        return mesh

    def knows_placement(self) -> bool:
        """True if the arrays this sharder's model touches are laid out by a known mesh (or the process has one
        device): an opaque op (``pallas_call``) can then be wrapped by :meth:`shard_map`."""
        if self.mesh is not None:
            return True
        return not jax.sharding.get_abstract_mesh().empty or jax.device_count() == 1

    def shard_map(self, f: Callable, in_axes: Sequence[Axes], out_axes: Any) -> Callable:
        """``f`` run per device on its shards: ``shard_map`` over the active mesh with specs from the logical
        ``in_axes`` (one tuple per positional argument) and ``out_axes`` (a tuple, or a tuple of tuples for
        several outputs). Without a multi-device mesh: ``f`` itself.

        ``f`` is called as ``f(*local_args, rules=fitted)``, ``fitted`` being the table actually used: a logical
        axis whose mesh axes do not divide some argument's dimension (batch 1 on dp = 2) is replicated for every
        argument and output, so all operands agree. Meant for ops that are independent per batch row / head
        (opaque kernels); ``f`` may call ``lax.axis_index`` on the fitted mesh axes.
        """
        mesh = self.active_mesh()
        if mesh is None:
            return functools.partial(f, rules=self.rules)

        def wrapped(*args):
            if len(args) != len(in_axes):
                raise ValueError(f"shard_map: {len(args)} arguments for {len(in_axes)} axes tuples")
            drop = set()
            for x, axes in zip(args, in_axes, strict=True):
                if len(axes) != x.ndim:
                    raise ValueError(f"argument of shape {x.shape} got {len(axes)} logical axes {axes}")
                for dim, name in zip(x.shape, axes, strict=True):
                    if name is not None and dim % _mesh_size(mesh, getattr(self.rules, name)):
                        drop.add(name)
            rules = self.rules.replace(**{n: None for n in drop}) if drop else self.rules
            in_specs = tuple(spec(a, rules) for a in in_axes)
            many = bool(out_axes) and isinstance(out_axes[0], tuple)
            out_specs = tuple(spec(a, rules) for a in out_axes) if many else spec(out_axes, rules)
            return shard_map_compat(functools.partial(f, rules=rules), mesh, in_specs, out_specs)(*args)

        return wrapped


def shard_map_compat(f: Callable, mesh: Any, in_specs: Any, out_specs: Any) -> Callable:
    """``jax.shard_map`` (jax ≥ 0.7; the only one left in 0.11) or ``jax.experimental.shard_map.shard_map`` on
    older jax, over every axis of ``mesh`` (a ``Mesh`` or ``AbstractMesh``), without the replication check
    (a ``pallas_call`` has no replication rule)."""
    new = getattr(jax, "shard_map", None)
    if new is not None:
        return new(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as old  # pragma: no cover - jax < 0.7

    return old(f, mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def assert_sharded(state: Any, min_bytes: int = 1 << 20, rules: AxisRules | None = None) -> None:
    """Fail loudly if a parameter of at least ``min_bytes`` is fully replicated on a multi-device mesh.

    With ``rules``, a parameter whose logical axes all map to None under them (a deliberate replication
    recorded in the table, e.g. k_proj when tp > Hkv) is allowed; one the table says to shard but that ended
    up replicated (a mesh axis dropped because it did not divide the dimension), or one without logical axes,
    is not. ``state`` may be an ``nnx.State`` (Variables carry their logical axes) or any pytree of arrays.
    """
    offenders = []
    if isinstance(state, nnx.State):
        items = [(".".join(map(str, p)), v) for p, v in nnx.to_flat_state(state)]
    else:
        items = [(jax.tree_util.keystr(p), x) for p, x in jax.tree_util.tree_leaves_with_path(state)]
    for name, leaf in items:
        axes = logical_axes(leaf)
        arr = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        if not isinstance(arr, jax.Array) or arr.nbytes < min_bytes:
            continue
        sh = arr.sharding
        if len(sh.device_set) <= 1 or not sh.is_fully_replicated:
            continue
        if rules is not None and axes is not None and not any(jax.tree.leaves(list(spec(axes, rules)))):
            continue  # replicated on purpose by the rules table
        offenders.append(f"{name} {arr.shape} {arr.dtype} ({arr.nbytes} B) logical axes {axes}")
    if offenders:
        raise AssertionError("large parameters replicated on every device:\n  " + "\n  ".join(offenders))
