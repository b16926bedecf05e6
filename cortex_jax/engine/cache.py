"""Per-slot decoding state of the hybrid model: KV cache for full-attention layers, conv + recurrent state for
Gated DeltaNet layers, and the number of cached tokens per row.

Shape letters: B rows (slots), S max cached tokens, Hkv KV heads, hd head dim, K conv taps, C conv channels
(``2·Hk·dk + Hv·dv``), Hv value heads, dk/dv key/value head dims.

* ``AttnCache(k, v)``: ``[B, Hkv, S, hd]`` each (head-major: the attention einsums and the flash kernel read
  one head's ``[S, hd]`` rows contiguously, no per-step transpose), model dtype, post-k_norm and post-RoPE.
  Entries at index ≥ ``lengths[b]`` are stale and never read.
* ``GdnCache(conv, recurrent)``: ``conv [B, K-1, C]`` the last K−1 *raw* ``in_proj_qkv`` outputs, channels in
  the model's key-head-group order (docs/sharding.md) (model
  dtype), ``recurrent [B, Hv, dk, dv]`` float32 (pitfall 13).
* ``HybridCache(layers, lengths)``: one entry per decoder layer in ``layer_kinds`` order; ``lengths [B]
  int32``.

The engine's slot pool is one HybridCache whose batch axis is the slot count: :func:`reset_rows` frees slots,
:func:`gather_rows` / :func:`scatter_rows` move a subset of rows in and out (all jittable).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from cortex_jax.mesh import make_mesh
from cortex_jax.pytree import pytree_dataclass
from cortex_jax.sharding import AxisRules, fit_to_mesh, rules_for, spec

Array = jax.Array


@pytree_dataclass()
class AttnCache:
    k: Array  # [B, Hkv, S, hd]
    v: Array  # [B, Hkv, S, hd]


@pytree_dataclass()
class GdnCache:
    conv: Array  # [B, K-1, C]
    recurrent: Array  # [B, Hv, dk, dv] float32


@pytree_dataclass()
class HybridCache:
    layers: tuple[AttnCache | GdnCache, ...]
    lengths: Array  # [B] int32

    @property
    def batch(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def max_len(self) -> int:
        """S of the attention layers (0 for a model without full-attention layers)."""
        for c in self.layers:
            if isinstance(c, AttnCache):
                return int(c.k.shape[2])
        return 0


def _is_full(kind: Any) -> bool:
    # accepts models.qwen36.config.LayerKind without importing models/ (cortex_jax must not depend on it)
    return getattr(kind, "value", kind) == "full_attention"


def _layer_shapes(cfg_text: Any, batch: int, max_len: int, dtype: Any):
    """Yield, per layer, ``(kind, {field: (shape, dtype, logical_axes)})``."""
    kv = (batch, cfg_text.num_key_value_heads, max_len, cfg_text.head_dim)
    kv_axes = ("batch", "kv_heads", None, None)
    conv = (batch, cfg_text.linear_conv_kernel_dim - 1, cfg_text.conv_dim)
    rec = (
        batch,
        cfg_text.linear_num_value_heads,
        cfg_text.linear_key_head_dim,
        cfg_text.linear_value_head_dim,
    )
    for kind in cfg_text.layer_kinds:
        if _is_full(kind):
            yield AttnCache, {"k": (kv, dtype, kv_axes), "v": (kv, dtype, kv_axes)}
        else:
            yield (
                GdnCache,
                {
                    "conv": (conv, dtype, ("batch", None, "gdn_conv")),
                    "recurrent": (rec, jnp.float32, ("batch", "gdn_v_heads", None, None)),
                },
            )


def cache_bytes(cfg_text: Any, batch: int, max_len: int, dtype: Any) -> int:
    """Device bytes :func:`init_cache` allocates (for up-front memory accounting)."""
    total = batch * 4  # lengths
    for _, fields in _layer_shapes(cfg_text, batch, max_len, dtype):
        for shape, dt, _ in fields.values():
            total += int(np.prod(shape)) * jnp.dtype(dt).itemsize
    return total


def cache_shardings(cfg_text: Any, batch: int, max_len: int, mesh: Mesh, rules: AxisRules | None = None):
    """A HybridCache-shaped pytree of NamedShardings (batch → dp, KV heads / GDN channels+heads → tp).

    ``rules``: default ``rules_for(cfg_text, mesh)``, the same fitted table ``load_model`` gives the model (KV
    replicated when tp does not divide Hkv). A mesh axis that does not divide its dimension (e.g. 3 slots on
    dp = 2) is dropped for that array (replicated).
    """
    rules = rules or rules_for(cfg_text, mesh)
    layers = []
    for cls, fields in _layer_shapes(cfg_text, batch, max_len, jnp.float32):
        layers.append(
            cls(**{n: NamedSharding(mesh, fit_to_mesh(s, spec(ax, rules), mesh)) for n, (s, _, ax) in fields.items()})
        )
    lengths = NamedSharding(mesh, fit_to_mesh((batch,), spec(("batch",), rules), mesh))
    return HybridCache(layers=tuple(layers), lengths=lengths)


def init_cache(cfg_text: Any, batch: int, max_len: int, dtype: Any, sharding: Any = None) -> HybridCache:
    """A zeroed cache, created on device inside ``jit`` (nothing is materialised on the host).

    ``sharding``: a pytree from :func:`cache_shardings`, or None for a 1×1 mesh of the default device. Either
    way the arrays are *committed* NamedSharding arrays, like the caches the jitted steps return, so the first
    step call and later ones hit the same compiled executable (an uncommitted zero cache costs a recompile).
    """
    if sharding is None:
        sharding = cache_shardings(cfg_text, batch, max_len, make_mesh(1, 1))

    def make() -> HybridCache:
        layers = tuple(
            cls(**{n: jnp.zeros(s, dt) for n, (s, dt, _) in fields.items()})
            for cls, fields in _layer_shapes(cfg_text, batch, max_len, dtype)
        )
        return HybridCache(layers=layers, lengths=jnp.zeros((batch,), jnp.int32))

    return jax.jit(make, out_shardings=sharding)()


def reset_rows(cache: HybridCache, row_mask: Array) -> HybridCache:
    """Zero every state of the rows where ``row_mask [B] bool`` is set, and their lengths (jittable)."""
    row_mask = jnp.asarray(row_mask, bool)

    def zero(x: Array) -> Array:
        m = row_mask.reshape((-1,) + (1,) * (x.ndim - 1))
        return jnp.where(m, jnp.zeros((), x.dtype), x)

    return jax.tree.map(zero, cache)


def gather_rows(cache: HybridCache, rows: Array) -> HybridCache:
    """The sub-cache of ``rows [n] int32`` (in that order)."""
    return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), cache)


def scatter_rows(cache: HybridCache, rows: Array, sub: HybridCache) -> HybridCache:
    """``cache`` with rows ``rows [n]`` replaced by the rows of ``sub`` (batch n)."""
    return jax.tree.map(lambda x, y: x.at[rows].set(y.astype(x.dtype)), cache, sub)
