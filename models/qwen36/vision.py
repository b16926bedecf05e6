"""Qwen3.6 vision tower (HF ``model.visual``): patches of any number of images → merged tokens at LM width.

Math (reference §6, pitfalls 19–22), per patch of an image/frame with patch grid (h, w), at row r, col c:

1. ``x = pixel_values @ Wp + bp``: the Conv3d(kernel = stride = (2, 16, 16)) as a matmul, vector order
   (C, T, kh, kw); pixel_values are cast to the activation dtype first.
2. ``x += Σ_4 taps pos_embed[tap] · weight``: the learned √num_pos × √num_pos table resampled bilinearly
   (align_corners=True) to (h, w): ``sr = r·(side−1)/max(h−1, 1)``; weights and sum in fp32, then cast.
3. ``depth`` pre-LN blocks: ``x += proj(attn(LN1(x)))``, ``x += fc2(gelu_tanh(fc1(LN2(x))))``. Attention is
   bidirectional *within one image/frame only*; q, k get a 2-D rotary (fp32): ``ang = concat(r·inv, c·inv)``,
   ``inv = θ^(−2i/(K/2))``, cos/sin = concat(ang, ang) over the full head dim, rotate-half.
4. Merger: LN per patch, group 4 consecutive patches (one 2×2 block) → fc1 → exact GELU → fc2 (width O).

Bucketing (why the layout arrays exist): images are *packed*, the patches of all images concatenated and
zero-padded to a bucket size N (:func:`patch_bucket`). Instead of static grids, each patch carries its
:class:`PatchLayout` entry (segment id, row, col, its frame's grid h, w; plus per-segment offsets/lengths) as
int32 arrays, so the position-table resampling, the rotary angles and the block-diagonal attention are all
computed on device from data. A jitted forward compiles once per bucket N (and per power-of-two count of
segments above 4), not once per image size. Padding patches have segment −1; their merged rows (at the end)
are dropped by the caller. The attention kernels live in ``vision_attention.py``.

Parameters: nnx paths mirror the HF keys under ``model.visual.``; Linear kernels are ``[in, out]`` named
``kernel``, biases ``bias``; LayerNorms ``scale``/``bias``; the position table is ``pos_embed.embedding``;
Conv3d ``[D, 3, 2, 16, 16]`` → ``patch_embed.proj.kernel [1536, D]``; the fused ``attn.qkv.weight [3·H·K, D]``
(rows q | k | v, head-major inside each) → ``attn.qkv.kernel [D, 3, H·K]`` and its bias ``[3·H·K]`` →
``[3, H·K]``, so that a contiguous split of the last axis hands a device whole heads of q, k *and* v.
:data:`VISION_WEIGHT_MAP` is that table.

Sharding (docs/sharding.md, "Vision tower"): replicated by default (the logical axes ``vision_heads`` /
``vision_ffn`` map to None); ``AxisRules().with_sharded_vision()`` makes each block Megatron-style tensor
parallel: qkv columns and proj rows by heads, fc1 columns and fc2 rows by FFN column, with one all-reduce after
``attn.proj`` and one after ``mlp.linear_fc2``. Patch embedding, position table, norms and the merger stay
replicated: together ~11 % of the parameters and ~3 % of the FLOPs (the merger runs on N/4 rows once), and a
replicated merger hands the text model replicated image features with no extra collective.

Shape letters: N patches (padded), P patch vector (C·T·p·p), D vision width, H heads, K head dim, F = K/4
rotary frequencies per axis, Q = N/4 merged tokens, O out width (= text hidden size), I FFN width.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cortex_jax import sharding
from cortex_jax.checkpoint import IDENTITY, TRANSPOSE, Rule, Transform
from cortex_jax.sharding import Axes, Sharder
from models.qwen36.config import VisionConfig
from models.qwen36.vision_attention import AttnImpl, PatchLayout, vision_attention

Array = jax.Array
_F32 = jnp.float32


def patch_layout(grids: Sequence[tuple[int, int, int]], n_total: int, merge: int = 2) -> PatchLayout:
    """Host-side layout for images with patch grids ``(t, h, w)`` packed in order, padded to ``n_total``.

    Patch p of a frame sits at ``in_col = p % m, in_row = (p // m) % m, bc = (p // m²) % (w/m),
    br = p // (m²·w/m)``, i.e. row = m·br + in_row, col = m·bc + in_col (reference §6).
    """
    seg, row, col, gh, gw = [], [], [], [], []
    s = 0
    for t, h, w in grids:
        p = np.arange(h * w)
        bw = w // merge
        r = (p // (merge * merge * bw)) * merge + (p // merge) % merge
        c = ((p // (merge * merge)) % bw) * merge + p % merge
        for _ in range(t):  # each video frame is its own attention block
            seg.append(np.full(h * w, s)), row.append(r), col.append(c)
            gh.append(np.full(h * w, h)), gw.append(np.full(h * w, w))
            s += 1
    n = sum(len(x) for x in seg)
    if n > n_total:
        raise ValueError(f"{n} patches do not fit the bucket of {n_total}")
    pad = n_total - n
    cat = lambda xs, fill: np.concatenate([*xs, np.full(pad, fill)]).astype(np.int32)  # noqa: E731
    m = max(4, 1 << (s - 1).bit_length())  # segment slots: a power of two, so few distinct shapes
    lens = np.full(m, -1, np.int32)
    lens[:s] = [len(x) for x in seg]
    offs = np.full(m + 1, -1, np.int32)
    offs[: s + 1] = np.concatenate([[0], np.cumsum(lens[:s])])
    return PatchLayout(cat(seg, -1), cat(row, 0), cat(col, 0), cat(gh, 1), cat(gw, 1), offs, lens)


def patch_bucket(n: int, minimum: int = 64) -> int:
    """Smallest of {2^k, 3·2^(k−1)} ≥ n (and ≥ minimum): ≤ 1.5× padding, ~2 compiles per octave of size."""
    b = minimum
    while b < n:
        b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
    return b


# ---- layers ------------------------------------------------------------------------------------------------
def _zeros(key, shape, dtype):
    return jnp.zeros(shape, dtype)


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with kernel ``[in, out]`` (logical ``axes`` (in, out); the bias follows out).

    With ``in`` sharded, each device's product is a partial sum: the caller's output constraint all-reduces it,
    and the (replicated) bias is added once, after the reduction."""

    def __init__(self, d_in: int, d_out: int, *, dtype, param_dtype, rngs: nnx.Rngs, axes: Axes = (None, None)):
        init = nnx.initializers.lecun_normal()
        self.kernel = sharding.param(rngs, init, (d_in, d_out), axes, param_dtype)
        self.bias = sharding.param(rngs, _zeros, (d_out,), (axes[1],), param_dtype)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with bias; statistics and affine in fp32, then cast (as torch's bf16 LayerNorm does)."""

    def __init__(self, d: int, eps: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.scale = sharding.param(rngs, nnx.initializers.ones, (d,), (None,), param_dtype)
        self.bias = sharding.param(rngs, _zeros, (d,), (None,), param_dtype)
        self.eps, self.dtype = eps, dtype

    def __call__(self, x: Array) -> Array:
        xf = x.astype(_F32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...].astype(_F32) + self.bias[...].astype(_F32)).astype(self.dtype)


def _rotate_half(u: Array) -> Array:
    half = u.shape[-1] // 2
    return jnp.concatenate([-u[..., half:], u[..., :half]], axis=-1)


class QKV(nnx.Module):
    """The fused q/k/v projection: ``[N, D] → [N, 3, H·K]``, kernel ``[D, 3, H·K]``, bias ``[3, H·K]``.

    The HF weight ``[3·H·K, D]`` reshaped, not reordered: the separate axis of 3 is what lets the heads axis
    shard contiguously (a split of the flat ``3·H·K`` columns would hand device 0 only queries)."""

    def __init__(self, d: int, n_heads: int, head_dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        hk = n_heads * head_dim
        self.kernel = sharding.param(rngs, init, (d, 3, hk), (None, None, "vision_heads"), param_dtype)
        self.bias = sharding.param(rngs, _zeros, (3, hk), (None, "vision_heads"), param_dtype)
        self.dtype = dtype

    def __call__(self, x: Array) -> Array:
        y = jnp.einsum("nd,dtc->ntc", x.astype(self.dtype), self.kernel[...].astype(self.dtype))
        return y + self.bias[...].astype(self.dtype)


class Attention(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs, attn: AttnImpl,
                 shard: Sharder):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = QKV(cfg.hidden_size, cfg.num_heads, cfg.head_dim, **kw)
        self.proj = Dense(cfg.hidden_size, cfg.hidden_size, **kw, axes=("vision_heads", None))
        self.num_heads, self.attn, self.shard = cfg.num_heads, attn, shard

    def __call__(self, x: Array, cos: Array, sin: Array, layout: PatchLayout) -> Array:
        n, shard = x.shape[0], self.shard
        heads = (None, "vision_heads", None)
        qkv = shard(self.qkv(x), (None, None, "vision_heads")).reshape(n, 3, self.num_heads, -1)
        q, k, v = (shard(qkv[:, i], heads) for i in range(3))  # 3 × [N, H, K]
        with jax.named_scope("vision_rope"):  # fp32 rotation, cast back (HF apply_rotary_pos_emb_vision)
            c, s = cos[:, None], sin[:, None]
            rot = lambda u: (u.astype(_F32) * c + _rotate_half(u.astype(_F32)) * s).astype(u.dtype)  # noqa: E731
            q, k = rot(q), rot(k)
        with jax.named_scope("vision_attn"):
            o = shard(vision_attention(q, k, v, layout, self.attn, shard=shard), heads)
        # proj rows are sharded like o's heads: partial sums, all-reduced by the replicated output constraint
        o = shard(o.reshape(n, -1), (None, "vision_heads"))
        return shard(self.proj(o), (None, None))


class MLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs, shard: Sharder):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear_fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, **kw, axes=(None, "vision_ffn"))
        self.linear_fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, **kw, axes=("vision_ffn", None))
        self.shard = shard

    def __call__(self, x: Array) -> Array:
        h = self.shard(self.linear_fc1(x), (None, "vision_ffn"))
        h = jax.nn.gelu(h, approximate=True)  # gelu_pytorch_tanh
        return self.shard(self.linear_fc2(h), (None, None))  # the block's second (and last) all-reduce


class Block(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs, attn: AttnImpl,
                 shard: Sharder):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.attn = Attention(cfg, **kw, attn=attn, shard=shard)
        self.mlp = MLP(cfg, **kw, shard=shard)
        self.shard = shard

    def __call__(self, x, cos, sin, layout):
        x = self.shard(x + self.attn(self.norm1(x), cos, sin, layout), (None, None))
        return self.shard(x + self.mlp(self.norm2(x)), (None, None))


class PatchEmbed(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.proj = Dense(cfg.patch_dim, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.proj(x)


class PosEmbed(nnx.Module):
    def __init__(self, n: int, d: int, *, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.embedding = sharding.param(rngs, init, (n, d), (None, None), param_dtype)

    def __call__(self, layout: PatchLayout) -> Array:
        """Bilinear align_corners=True resampling of the square table at each patch: ``[N, D]`` fp32."""
        side = int(round(self.embedding.shape[0] ** 0.5))

        def axis(idx, size):  # HF vision_utils._interpolation_axis_taps_weights, same fp32 op order
            src = idx.astype(_F32) * (side - 1) / jnp.maximum(size - 1, 1).astype(_F32)
            fl = jnp.floor(src)
            off = jnp.arange(2, dtype=_F32)
            taps = jnp.clip(fl.astype(jnp.int32)[:, None] + jnp.arange(2), 0, side - 1)
            return taps, jnp.maximum(1 - jnp.abs(src[:, None] - fl[:, None] - off), 0.0)

        ht, hw = axis(layout.row, layout.grid_h)
        wt, ww = axis(layout.col, layout.grid_w)
        idx = (ht[:, :, None] * side + wt[:, None, :]).reshape(-1, 4)
        wts = (hw[:, :, None] * ww[:, None, :]).reshape(-1, 4)
        return (self.embedding[...][idx].astype(_F32) * wts[:, :, None]).sum(1)


class Merger(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d4 = cfg.hidden_size * cfg.spatial_merge_size**2
        self.norm = LayerNorm(cfg.hidden_size, 1e-6, **kw)
        self.linear_fc1 = Dense(d4, d4, **kw)
        self.linear_fc2 = Dense(d4, cfg.out_hidden_size, **kw)
        self.d4 = d4

    def __call__(self, x: Array) -> Array:
        x = self.norm(x).reshape(-1, self.d4)  # LN per patch, then 4 consecutive patches = one 2×2 block
        return self.linear_fc2(jax.nn.gelu(self.linear_fc1(x), approximate=False))  # exact erf GELU


class Qwen36VisionModel(nnx.Module):
    """The vision tower. ``__call__(pixel_values [N, P], grid_thw) -> [N/4, O]``; :meth:`forward` is the
    bucketed, jit-friendly entry taking a :class:`PatchLayout` instead of static grids.

    ``shard``: the activation constraints (``Sharder(rules, mesh)``, rules fitted by ``rules_for(...,
    vision_cfg=vcfg)``); the default (no mesh) is the identity. Whether the blocks are tensor parallel is the
    rules' ``vision_heads`` / ``vision_ffn`` entries, not a flag here."""

    def __init__(self, vcfg: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs,
                 attn: AttnImpl = AttnImpl(), scan_blocks: bool = False, shard: Sharder | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        shard = shard or Sharder()
        self.cfg, self.dtype, self.scan_blocks = vcfg, dtype, scan_blocks
        self.patch_embed = PatchEmbed(vcfg, **kw)
        self.pos_embed = PosEmbed(vcfg.num_position_embeddings, vcfg.hidden_size, param_dtype=param_dtype,
                                  rngs=rngs)
        self.blocks = nnx.List([Block(vcfg, **kw, attn=attn, shard=shard) for _ in range(vcfg.depth)])
        self.merger = Merger(vcfg, **kw)

    def rotary(self, layout: PatchLayout) -> tuple[Array, Array]:
        """cos, sin ``[N, K]`` fp32 from each patch's (row, col)."""
        half = self.cfg.head_dim // 2
        inv = 1.0 / (jnp.float32(self.cfg.rope_theta) ** (jnp.arange(0, half, 2, dtype=_F32) / half))  # [F]
        r, c = layout.row.astype(_F32)[:, None], layout.col.astype(_F32)[:, None]
        ang = jnp.concatenate([r * inv, c * inv], -1)  # [N, 2F]: rows drive the first half, cols the second
        ang = jnp.concatenate([ang, ang], -1)
        return jnp.cos(ang), jnp.sin(ang)

    def forward(self, pixel_values: Array, layout: PatchLayout) -> tuple[Array, Array]:
        """(merged ``[N/4, O]``, last hidden ``[N, D]``); N must be a multiple of 4 (merge blocks)."""
        with jax.named_scope("vision_embed"):
            x = self.patch_embed(pixel_values.astype(self.dtype))  # pitfall 22: cast before the patch matmul
            x = x + self.pos_embed(layout).astype(x.dtype)
        cos, sin = self.rotary(layout)
        if self.scan_blocks and len(self.blocks) > 1:
            # One traced block body instead of `depth` copies: ~2× faster compile per bucket. Stacking the
            # per-block weights costs one copy of the tower's weights per call (≈0.9 GB bf16 at 27B: ~2 ms).
            graphdef = nnx.graphdef(self.blocks[0])
            stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(b) for b in self.blocks])
            body = lambda h, st: (nnx.merge(graphdef, st)(h, cos, sin, layout), None)  # noqa: E731
            x, _ = jax.lax.scan(body, x, stacked)
        else:
            for blk in self.blocks:
                x = blk(x, cos, sin, layout)
        with jax.named_scope("vision_merger"):
            return self.merger(x), x

    def __call__(self, pixel_values: Array, grid_thw: Sequence[tuple[int, int, int]]) -> Array:
        layout = patch_layout([tuple(int(v) for v in g) for g in grid_thw], pixel_values.shape[0],
                              self.cfg.spatial_merge_size)
        return self.forward(pixel_values, jax.tree.map(jnp.asarray, layout))[0]


# ---- checkpoint mapping ------------------------------------------------------------------------------------
# Conv3d weight [D, C, T, kh, kw] → Dense kernel [C·T·kh·kw, D]. The patch embedding is always replicated, so
# the loader asks for the whole tensor (the flattened P axis could not be sliced per device anyway).
CONV3D = Transform(
    "conv3d",
    lambda s: (int(np.prod(s[1:])), s[0]) if len(s) == 5 else ("bad-rank", *s),
    lambda i: (i[1], slice(None), slice(None), slice(None), slice(None)),
    lambda x: x.reshape(x.shape[0], -1).T,
)
# Fused qkv weight [3·H·K, D] → kernel [D, 3, H·K]: the file is read as its free view [3, H·K, D], so a device
# holding heads h0..h1 reads three row blocks (its q, k and v heads) and transposes them on the device.
QKV_KERNEL = Transform(
    "qkv-heads",
    lambda s: (s[1], 3, s[0] // 3) if len(s) == 2 and s[0] % 3 == 0 else ("bad-rank", *s),
    lambda i: (i[1], i[2], i[0]),
    lambda x: x.transpose(2, 0, 1),
    view=lambda s: (3, s[0] // 3, s[1]),
    perm=(2, 0, 1),
)
QKV_BIAS = Transform(
    "qkv-bias-heads",
    lambda s: (3, s[0] // 3) if len(s) == 1 and s[0] % 3 == 0 else ("bad-rank", *s),
    lambda i: tuple(i),
    lambda x: x,
    view=lambda s: (3, s[0] // 3),
)
# HF key after ``model.visual.`` (regex) → nnx path template below the vision module, transform.
VISION_WEIGHT_MAP: tuple[tuple[str, str, Transform], ...] = (
    (r"patch_embed\.proj\.weight", "patch_embed.proj.kernel", CONV3D),
    (r"patch_embed\.proj\.bias", "patch_embed.proj.bias", IDENTITY),
    (r"pos_embed\.weight", "pos_embed.embedding", IDENTITY),
    (r"blocks\.(\d+)\.(norm1|norm2)\.weight", r"blocks.\1.\2.scale", IDENTITY),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", r"blocks.\1.attn.qkv.kernel", QKV_KERNEL),
    (r"blocks\.(\d+)\.attn\.qkv\.bias", r"blocks.\1.attn.qkv.bias", QKV_BIAS),
    (r"blocks\.(\d+)\.(attn\.proj|mlp\.linear_fc1|mlp\.linear_fc2)\.weight", r"blocks.\1.\2.kernel", TRANSPOSE),
    (r"blocks\.(\d+)\.(norm1|norm2|attn\.proj|mlp\.linear_fc1|mlp\.linear_fc2)\.bias", r"blocks.\1.\2.bias",
     IDENTITY),
    (r"merger\.norm\.weight", "merger.norm.scale", IDENTITY),
    (r"merger\.(norm|linear_fc1|linear_fc2)\.bias", r"merger.\1.bias", IDENTITY),
    (r"merger\.(linear_fc1|linear_fc2)\.weight", r"merger.\1.kernel", TRANSPOSE),
)


def vision_rules(dst_prefix: str = "visual.") -> tuple[Rule, ...]:
    """Loader rules for ``model.visual.*`` → ``{dst_prefix}*`` (``""`` for a standalone vision model);
    pass them as ``qwen36_weight_map(..., vision_rules=vision_rules())``."""
    return tuple(Rule(r"model\.visual\." + pat, dst_prefix + tmpl, tf) for pat, tmpl, tf in VISION_WEIGHT_MAP)
