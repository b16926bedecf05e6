"""Block-diagonal (per image / frame) attention over packed vision patches, and the per-patch layout it reads.

Shape letters: N patches (packed, padded to a bucket), H heads, K head dim, M segment slots (images/frames).

Patch i attends to patch j iff both belong to the same segment (reference §6, pitfall 21); scale K^−0.5;
softmax in fp32. Two implementations with the same result:

* ``xla`` (portable, CPU tests): for N ≤ block the ``[H, N, N]`` logits at once; above, keys in blocks with an
  online softmax (flash-style), memory O(H·N·block). It still computes every (query, key) pair, masked.
* ``cudnn`` (GPU, bf16/fp16): cuDNN flash attention on the *packed* layout (``q_offsets``/``kv_offsets`` with
  per-segment lengths), so cross-image pairs are never computed. Padding patches belong to no segment; their
  output rows are zeroed here (they are dropped after the merger anyway).

``AttnImpl(kind="auto")`` picks cudnn on GPU for 16-bit activations and xla otherwise.

Sharded heads (``vision_heads`` on tp, docs/sharding.md): the xla path is plain jnp, per head, and GSPMD
partitions it over heads with no communication. The cuDNN call is opaque to the partitioner, so it runs under
``Sharder.shard_map``: each device attends over its own heads of q, k, v with the (replicated) layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import jax
import jax.numpy as jnp

from cortex_jax.pytree import pytree_dataclass
from cortex_jax.sharding import Sharder

Array = jax.Array
_F32 = jnp.float32
_NEG = -1e30  # finite "−inf": keeps the online softmax free of (−inf) − (−inf)


@pytree_dataclass()
class PatchLayout:
    """Per-patch metadata (``[N] int32`` unless noted); built on the host by ``vision.patch_layout``."""

    segment: Array  # image/frame index (attention block), −1 for padding
    row: Array  # patch row / col inside its frame (merge-block order is already applied)
    col: Array
    grid_h: Array  # the frame's patch grid, for the position-table resampling
    grid_w: Array
    seg_offsets: Array  # [M+1] start of each segment, −1 past the last (cuDNN packed attention)
    seg_lens: Array  # [M] patches per segment, −1 past the last


@dataclass(frozen=True)
class AttnImpl:
    """Static choice of attention kernel: ``kind`` in auto | xla | cudnn; ``block`` = xla key-block size."""

    kind: Literal["auto", "xla", "cudnn"] = "auto"
    block: int = 1024


def vision_attention(q: Array, k: Array, v: Array, layout: PatchLayout, impl: AttnImpl = AttnImpl(),
                     shard: Sharder | None = None) -> Array:
    """``[N, H, K]`` q, k, v → ``[N, H, K]`` (q.dtype). ``shard``: the model's sharder; with ``vision_heads``
    sharded the cuDNN kernel runs per head shard (shard_map)."""
    kind = impl.kind
    if kind == "auto":
        on_gpu = jax.default_backend() == "gpu"
        kind = "cudnn" if on_gpu and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
    if kind == "cudnn":
        if shard is None or shard.rules.vision_heads is None:
            return cudnn_segment_attention(q, k, v, layout)  # replicated tower: the call as it always was
        return _per_head_shard(q, k, v, layout, shard)
    return segment_attention(q, k, v, layout.segment, impl.block)


def _per_head_shard(q: Array, k: Array, v: Array, layout: PatchLayout, shard: Sharder) -> Array:
    """:func:`cudnn_segment_attention` on each device's heads ``[N, H/tp, K]``; the layout is replicated."""
    leaves, tree = jax.tree.flatten(layout)
    heads = (None, "vision_heads", None)

    def local(q, k, v, *lay, rules):  # rules: the fitted table (unused: the kernel needs no axis index)
        # looked up at call time so a test can stand in for the GPU-only kernel
        return cudnn_segment_attention(q, k, v, jax.tree.unflatten(tree, lay))

    in_axes = (heads, heads, heads, *[(None,) * x.ndim for x in leaves])
    return shard.shard_map(local, in_axes, heads)(q, k, v, *leaves)


def cudnn_segment_attention(q: Array, k: Array, v: Array, layout: PatchLayout) -> Array:
    """cuDNN flash attention over packed segments (jax's cuDNN SDPA with per-segment offsets/lengths)."""
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_sdpa  # no public API

    lens, offs = layout.seg_lens[None], layout.seg_offsets[None]  # batch of one packed row
    o = cudnn_sdpa(q[None], k[None], v[None], q_seqlen=lens, kv_seqlen=lens, q_offsets=offs, kv_offsets=offs,
                   scale=q.shape[-1] ** -0.5, qkv_layout="BTNH")[0]
    return jnp.where((layout.segment >= 0)[:, None, None], o, 0).astype(q.dtype)


def segment_attention(q: Array, k: Array, v: Array, segment: Array, block: int = 1024) -> Array:
    """Masked attention in plain jnp: patch i sees patch j iff ``segment[i] == segment[j]``."""
    n, h, d = q.shape
    qs = q.astype(_F32) * (d**-0.5)
    if n <= block:
        logits = jnp.einsum("qhd,khd->hqk", qs, k.astype(_F32))
        logits = jnp.where((segment[:, None] == segment[None, :])[None], logits, _NEG)
        p = jax.nn.softmax(logits, axis=-1)
        return jnp.einsum("hqk,khd->qhd", p.astype(v.dtype), v, preferred_element_type=_F32).astype(q.dtype)
    n_blk = -(-n // block)
    pad = n_blk * block - n
    kb = jnp.pad(k, ((0, pad), (0, 0), (0, 0))).reshape(n_blk, block, h, d)
    vb = jnp.pad(v, ((0, pad), (0, 0), (0, 0))).reshape(n_blk, block, h, d)
    sb = jnp.pad(segment, (0, pad), constant_values=-2).reshape(n_blk, block)  # −2 matches nothing

    def step(carry, blk):
        m, l, acc = carry  # running max [H, N], denominator [H, N], numerator [H, N, K], all fp32
        k_i, v_i, s_i = blk
        logits = jnp.einsum("qhd,khd->hqk", qs, k_i.astype(_F32))
        mask = (segment[:, None] == s_i[None, :])[None]
        logits = jnp.where(mask, logits, _NEG)
        m_new = jnp.maximum(m, logits.max(-1))
        p = jnp.where(mask, jnp.exp(logits - m_new[..., None]), 0.0)
        corr = jnp.exp(m - m_new)
        l = l * corr + p.sum(-1)
        pv = jnp.einsum("hqk,khd->hqd", p.astype(v.dtype), v_i, preferred_element_type=_F32)
        return (m_new, l, acc * corr[..., None] + pv), None

    init = (jnp.full((h, n), _NEG, _F32), jnp.zeros((h, n), _F32), jnp.zeros((h, n, d), _F32))
    (_, l, acc), _ = jax.lax.scan(step, init, (kb, vb, sb))
    return (acc / l[..., None]).transpose(1, 0, 2).astype(q.dtype)
