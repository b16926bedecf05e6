"""Multimodal glue: image tokens, 3-axis mRoPE positions, feature splicing and the image+text model.

Shape letters: B batch, T tokens, D text width, N patches (bucketed), P patch vector, Q merged image tokens.

Flow for a prompt with images (reference §2, §5)::

    ids = expand_image_tokens(prompt_ids, images, cfg.image_token_id)     # 1 pad → t·h·w/4 pads per image
    positions, rope_delta = rope_index(ids, [im.grid_thw for im in images], cfg)   # [3, T], int
    pv, layout, n_tok = pack_images(images)                                # bucketed patches + layout
    feats = vision_step(state, pv, layout)                    # [N/4, D]; rows ≥ n_tok are padding
    embeds = splice_image_features(model.embed(ids[None]), feats, ids[None] == image_token_id)   # [1, T, D]
    hidden, cache = model(ids[None], positions[:, None], valid, cache, input_embeds=embeds)

Decode (pitfall 17): the next token's position on all three axes is ``tokens_so_far + rope_delta``. A text
continuation with the cache uses ``arange(past, past + T) + rope_delta``; one with new images calls
:func:`rope_index` with ``past_len``/``past_delta``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cortex_jax.checkpoint import load_state
from cortex_jax.engine.api import ImageInput
from cortex_jax.mesh import make_mesh
from cortex_jax.pytree import unflatten_state
from cortex_jax.sharding import AxisRules, Sharder, rules_for, state_shardings
from models.qwen36.config import Qwen36Config
from models.qwen36.decoder import Qwen36ForCausalLM
from models.qwen36.vision import Qwen36VisionModel, patch_bucket, patch_layout, vision_rules
from models.qwen36.vision_attention import AttnImpl, PatchLayout
from models.qwen36.weight_map import qwen36_weight_map

Array = jax.Array


# ---- host side: tokens and positions -----------------------------------------------------------------------
def expand_image_tokens(prompt_ids: Sequence[int], images: Sequence[ImageInput],
                        image_token_id: int) -> list[int]:
    """Replace the k-th single ``<|image_pad|>`` by ``images[k].num_tokens`` copies (as the HF processor
    does)."""
    n_pads = sum(1 for t in prompt_ids if t == image_token_id)
    if n_pads != len(images):
        raise ValueError(f"prompt has {n_pads} image placeholders but {len(images)} images were given")
    out: list[int] = []
    it = iter(images)
    for t in prompt_ids:
        out.extend([t] * next(it).num_tokens if t == image_token_id else [t])
    return out


def rope_index(input_ids: Sequence[int] | np.ndarray, image_grids: Sequence[tuple[int, int, int]],
               cfg: Qwen36Config, *, past_len: int = 0, past_delta: int = 0) -> tuple[np.ndarray, int]:
    """mRoPE positions ``[3, T]`` int32 and ``rope_delta`` for one row of (already expanded) tokens.

    Runs of equal type: a text run of n gets ``cur + i`` on all axes, ``cur += n``; an image run (one grid
    each, in order) gets ``(cur + t, cur + row, cur + col)`` over the merged ``(t, h/2, w/2)`` raster, then
    ``cur += max(h/2, w/2)`` (pitfall 18). ``cur`` starts at ``past_len + past_delta`` (0 for a fresh prompt);
    ``rope_delta = max position + 1 − (past_len + T)``. Video is not supported (its tokens raise).
    """
    ids = np.asarray(input_ids, np.int64)
    if np.any(ids == cfg.video_token_id):
        raise ValueError("video tokens are not supported")
    m = cfg.vision.spatial_merge_size if cfg.vision is not None else 2
    grids = iter(image_grids)
    is_img = (ids == cfg.image_token_id).tolist()
    cur = past_len + past_delta
    chunks, start = [], 0
    for img, group in itertools.groupby(is_img):
        n = len(list(group))
        if not img:
            chunks.append(np.broadcast_to(cur + np.arange(n), (3, n)))
            cur += n
        else:
            try:
                t, h, w = next(grids)
            except StopIteration:
                raise ValueError("more image-token runs than image grids") from None
            lh, lw = h // m, w // m
            if t * lh * lw != n:
                raise ValueError(f"image run of {n} tokens at {start} does not match grid {(t, h, w)} "
                                 f"({t * lh * lw} tokens)")
            tt, hh, ww = np.meshgrid(np.arange(t), np.arange(lh), np.arange(lw), indexing="ij")
            chunks.append(np.stack([tt, hh, ww]).reshape(3, -1) + cur)
            cur += max(lh, lw)
        start += n
    if next(grids, None) is not None:
        raise ValueError("more image grids than image-token runs")
    pos = np.concatenate(chunks, axis=1).astype(np.int32) if chunks else np.zeros((3, 0), np.int32)
    delta = (int(pos.max()) + 1 if pos.size else past_len + past_delta) - (past_len + len(ids))
    return pos, delta


def pack_images(images: Sequence[ImageInput], *, bucket: int | None = None,
                min_bucket: int = 64) -> tuple[np.ndarray, PatchLayout, int]:
    """Concatenate patches of ``images`` and zero-pad to a bucket: (pixel_values ``[N, P]`` f32, layout,
    number of valid merged tokens Q). The vision step's output rows ``[:Q]`` are the image tokens in order."""
    grids = [tuple(int(v) for v in im.grid_thw) for im in images]
    n = sum(t * h * w for t, h, w in grids)
    size = bucket or patch_bucket(n, min_bucket)
    pv = np.zeros((size, images[0].pixel_values.shape[1]), np.float32)
    pv[:n] = np.concatenate([np.asarray(im.pixel_values, np.float32) for im in images])
    return pv, patch_layout(grids, size), sum(im.num_tokens for im in images)


# ---- device side -------------------------------------------------------------------------------------------
def splice_image_features(embeds: Array, features: Array, image_mask: Array) -> Array:
    """Put feature rows ``0, 1, ...`` at the image-token positions of ``embeds`` ``[B, T, D]`` in row-major
    order (HF ``masked_scatter``); ``features [≥Q, D]`` may carry padding rows past the last image token."""
    mask = image_mask.astype(bool)
    idx = jnp.cumsum(mask.reshape(-1), dtype=jnp.int32).reshape(mask.shape) - 1
    rows = jnp.take(features, jnp.clip(idx, 0, features.shape[0] - 1), axis=0).astype(embeds.dtype)
    return jnp.where(mask[..., None], rows, embeds)


class Qwen36ForConditionalGeneration(Qwen36ForCausalLM):
    """The text model plus ``visual`` (paths ``model.*``, ``lm_head.*``, ``visual.*``). Same call contract as
    :class:`Qwen36ForCausalLM`; images enter through ``input_embeds`` built by :meth:`embed_multimodal`.
    ``rules``/``mesh`` drive the vision tower's constraints too (fit them with ``rules_for(cfg.text, mesh,
    rules, vision_cfg=cfg.vision)``)."""

    def __init__(self, cfg: Qwen36Config, *, dtype: Any = jnp.float32, param_dtype: Any | None = None,
                 rngs: nnx.Rngs | None = None, rules: AxisRules | None = None, gdn_chunk_size: int = 64,
                 vision_attn: AttnImpl = AttnImpl(), mesh: Any = None):
        if cfg.vision is None:
            raise ValueError("config has no vision_config")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        super().__init__(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, rules=rules,
                         gdn_chunk_size=gdn_chunk_size, mesh=mesh)
        self.visual = Qwen36VisionModel(cfg.vision, dtype=dtype, param_dtype=param_dtype or dtype, rngs=rngs,
                                        attn=vision_attn, shard=Sharder(self.rules, mesh))

    def encode_images(self, pixel_values: Array, layout: PatchLayout) -> Array:
        """``[N, P]`` patches → ``[N/4, D]`` merged image tokens (padding rows at the end)."""
        return self.visual.forward(pixel_values, layout)[0]

    def embed_multimodal(self, tokens: Array, features: Array) -> Array:
        """Token embeddings ``[B, T, D]`` with image-token rows replaced by ``features``."""
        return splice_image_features(self.embed(tokens), features, tokens == self.config.image_token_id)


def make_vision_step(graphdef: nnx.GraphDef):
    """Jitted ``vision_step(state, pixel_values [N, P], layout) -> [N/4, D]``; compiles once per bucket N."""

    @jax.jit
    def vision_step(state: nnx.State, pixel_values: Array, layout: PatchLayout) -> Array:
        return nnx.merge(graphdef, unflatten_state(state)).encode_images(pixel_values, layout)

    return vision_step


def make_embed_step(graphdef: nnx.GraphDef):
    """Jitted ``embed_step(state, tokens [B, T], features [Q', D]) -> input_embeds [B, T, D]``."""

    @jax.jit
    def embed_step(state: nnx.State, tokens: Array, features: Array) -> Array:
        return nnx.merge(graphdef, unflatten_state(state)).embed_multimodal(tokens, features)

    return embed_step


def prompt_embeds(vision_step, embed_step, state: nnx.State, prompt_ids: Sequence[int],
                  images: Sequence[ImageInput], cfg: Qwen36Config,
                  ) -> tuple[np.ndarray, Array, np.ndarray, int]:
    """Everything a prefill needs for one multimodal prompt: (expanded ids ``[T]``, input_embeds ``[T, D]``,
    positions ``[3, T]``, rope_delta). Text-only prompts come back with plain positions and delta 0."""
    ids = np.asarray(expand_image_tokens(prompt_ids, images, cfg.image_token_id), np.int32)
    positions, delta = rope_index(ids, [im.grid_thw for im in images], cfg)
    if images:
        pv, layout, _ = pack_images(images)
        feats = vision_step(state, pv, layout)
    else:
        feats = jnp.zeros((1, cfg.text.hidden_size), jnp.float32)
    return ids, embed_step(state, ids[None], feats)[0], positions, delta


def load_multimodal_model(ckpt_dir: str | Path, *, dtype: Any = jnp.float32, param_dtype: Any | None = None,
                          mesh: Any = None, rules: AxisRules | None = None, gdn_chunk_size: int = 64,
                          vision_attn: AttnImpl = AttnImpl(),
                          ) -> tuple[nnx.GraphDef, nnx.State, Qwen36Config]:
    """``(graphdef, state, cfg)`` of :class:`Qwen36ForConditionalGeneration` from a VLM checkpoint
    (strict: every tensor mapped, none missing), every tensor read straight into its shards on ``mesh``.

    ``rules`` (default ``AxisRules()``: vision tower replicated) are fitted by ``rules_for`` to the text *and*
    vision head counts; ``rules=AxisRules().with_sharded_vision()`` makes the vision blocks tensor parallel
    over tp (each vision axis falls back to replicated where tp does not divide it; docs/sharding.md).
    ``vision_attn``: the vision attention kernel (default auto: cuDNN on GPU for 16-bit, else xla)."""
    cfg = Qwen36Config.from_dir(ckpt_dir)
    mesh = mesh if mesh is not None else make_mesh(1, 1)
    rules = rules_for(cfg.text, mesh, rules, vision_cfg=cfg.vision)
    abstract = nnx.eval_shape(lambda: Qwen36ForConditionalGeneration(
        cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0), rules=rules,
        gdn_chunk_size=gdn_chunk_size, vision_attn=vision_attn, mesh=mesh))
    graphdef, abs_state = nnx.split(abstract)
    wmap = qwen36_weight_map(tied=cfg.tie_word_embeddings, text=cfg.text, vision_rules=vision_rules("visual."))
    state = load_state(ckpt_dir, abs_state, state_shardings(abs_state, mesh, rules), wmap)
    return graphdef, state, cfg
