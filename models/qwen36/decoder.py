"""The Qwen3.6 text decoder: hybrid Gated DeltaNet / gated attention stack, final norm, LM head, MTP weights.

Shape letters: B batch, T new tokens, S cache length, D model width, V vocab, R rotary dim.

Per layer (reference §3.1)::

    h = x + mixer(RMSNorm1p(x, input_layernorm))     # mixer: GatedDeltaNet or gated attention by layer kind
    x = h + MLP(RMSNorm1p(h, post_attention_layernorm))
    hidden = RMSNorm1p(x, norm);  logits = hidden @ lm_headᵀ  (or embed_tokensᵀ when tied)

nnx attribute paths mirror the HF checkpoint keys (``model.layers[3].self_attn.q_proj.kernel`` ⇔
``model.language_model.layers.3.self_attn.q_proj.weight``), so models/qwen36/weight_map.py is a near-identity
table.

Call contract (docs/architecture.md)::

    hidden, cache = model(tokens [B,T] i32, positions [3,B,T] i32, valid [B,T] bool, cache, input_embeds=None)
    logits = model.logits(hidden_rows)      # [..., D] -> [..., V] float32

Valid token number n (0-based, among the row's valid tokens) of row b goes to cache index ``lengths[b] + n``
and attends to indices ``0 .. lengths[b] + n``; invalid tokens are never written and leave every state
unchanged. Supported: ``valid`` a prefix of the row (right padding, any cache) or a suffix on an empty cache
(left padding).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from cortex_jax.engine.cache import AttnCache, GdnCache, HybridCache
from cortex_jax.kernels.rope import mrope_cos_sin, text_inv_freq
from cortex_jax.sharding import AxisRules, Sharder
from models.qwen36.attention import Qwen36Attention
from models.qwen36.config import LayerKind, Qwen36Config, TextConfig
from models.qwen36.gated_deltanet import Qwen36GatedDeltaNet
from models.qwen36.layers import DType, Embed, Linear, RMSNorm1p
from models.qwen36.mlp import Qwen36MLP

Array = jax.Array


class Qwen36DecoderLayer(nnx.Module):
    """Checkpoint tensors: ``input_layernorm.weight [D]``, ``post_attention_layernorm.weight [D]``, the
    mixer's (``linear_attn.*`` or ``self_attn.*``) and ``mlp.*``."""

    def __init__(
        self,
        cfg: TextConfig,
        kind: LayerKind,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        chunk_size: int = 64,
        shard: Sharder | None = None,
    ):
        self.kind = kind
        self.shard = shard = shard or Sharder()
        eps, d = cfg.rms_norm_eps, cfg.hidden_size
        self.input_layernorm = RMSNorm1p(d, "embed", eps=eps, param_dtype=param_dtype, rngs=rngs)
        if kind is LayerKind.FULL:
            self.self_attn = Qwen36Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, shard=shard)
        else:
            self.linear_attn = Qwen36GatedDeltaNet(
                cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs, chunk_size=chunk_size, shard=shard
            )
        self.post_attention_layernorm = RMSNorm1p(d, "embed", eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.mlp = Qwen36MLP(d, cfg.intermediate_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs, shard=shard)

    def __call__(self, x: Array, cache: AttnCache | GdnCache, ctx: dict[str, Array]):
        h = self.input_layernorm(x)
        if self.kind is LayerKind.FULL:
            h, cache = self.self_attn(h, ctx["cos"], ctx["sin"], cache, ctx["write_idx"], ctx["q_index"], ctx["kv_len"])
        else:
            h, cache = self.linear_attn(h, ctx["valid"], cache, ctx["conv_end"])
        x = self.shard(x + h, ("batch", None, "embed"))
        return x + self.mlp(self.post_attention_layernorm(x)), cache


class Qwen36TextModel(nnx.Module):
    """``embed_tokens.weight [V, D]``, ``layers.{i}.*``, ``norm.weight [D]``."""

    def __init__(
        self,
        cfg: TextConfig,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        chunk_size: int = 64,
        shard: Sharder | None = None,
    ):
        self.cfg = cfg
        self.dtype = dtype
        self.shard = shard = shard or Sharder()
        self.embed_tokens = Embed(cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [
                Qwen36DecoderLayer(
                    cfg, kind, dtype=dtype, param_dtype=param_dtype, rngs=rngs, chunk_size=chunk_size, shard=shard
                )
                for kind in cfg.layer_kinds
            ]
        )
        self.norm = RMSNorm1p(cfg.hidden_size, "embed", eps=cfg.rms_norm_eps, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, h: Array, positions: Array, valid: Array, cache: HybridCache) -> tuple[Array, HybridCache]:
        cfg = self.cfg
        b, t, _ = h.shape
        h = self.shard(h, ("batch", None, "embed"))
        valid = valid.astype(bool)
        lengths = cache.lengths.astype(jnp.int32)
        n_valid = jnp.sum(valid, axis=-1, dtype=jnp.int32)
        rank = jnp.cumsum(valid, axis=-1, dtype=jnp.int32) - 1  # index among the row's valid tokens
        cache_idx = lengths[:, None] + rank  # [B,T] cache index of each valid token
        s = cache.max_len
        steps = jnp.arange(1, t + 1, dtype=jnp.int32)
        inv_freq = text_inv_freq(cfg.rotary_dim, cfg.rope_theta)
        cos, sin = mrope_cos_sin(positions, inv_freq, cfg.mrope_section, self.dtype)
        ctx = {
            "valid": valid,
            "cos": cos,
            "sin": sin,
            "write_idx": jnp.where(valid, cache_idx, s),  # index S is out of range: invalid writes are dropped
            "q_index": jnp.maximum(cache_idx, 0),  # invalid queries read something finite; ignored downstream
            "kv_len": lengths + n_valid,
            "conv_end": jnp.max(jnp.where(valid, steps, 0), axis=-1),
        }
        new_layers = []
        for i, (layer, layer_cache) in enumerate(zip(self.layers, cache.layers, strict=True)):
            # names every op of the layer in HLO metadata and profiles (scripts/inspect_collectives.py)
            with jax.named_scope(f"layer{i}_{layer.kind.name.lower()}"):
                h, layer_cache = layer(h, layer_cache, ctx)
            new_layers.append(layer_cache)
        return self.norm(h), HybridCache(layers=tuple(new_layers), lengths=lengths + n_valid)


class Qwen36MTP(nnx.Module):
    """Multi-token-prediction head weights (reference §10), loaded and kept for speculative decoding, not run.

    ``mtp.fc.weight [D, 2D]``, ``mtp.pre_fc_norm_embedding.weight [D]``, ``mtp.pre_fc_norm_hidden.weight
    [D]``, ``mtp.norm.weight [D]``, ``mtp.layers.{n}.*`` (full-attention decoder layers).
    """

    def __init__(
        self,
        cfg: TextConfig,
        n_layers: int,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        shard: Sharder | None = None,
    ):
        d, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.fc = Linear(2 * d, d, (None, "embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.pre_fc_norm_embedding = RMSNorm1p(d, "embed", eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.pre_fc_norm_hidden = RMSNorm1p(d, "embed", eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.norm = RMSNorm1p(d, "embed", eps=eps, param_dtype=param_dtype, rngs=rngs)
        self.layers = nnx.List(
            [
                Qwen36DecoderLayer(
                    cfg, LayerKind.FULL, dtype=dtype, param_dtype=param_dtype, rngs=rngs, shard=shard
                )
                for _ in range(n_layers)
            ]
        )


class Qwen36ForCausalLM(nnx.Module):
    """Text model + LM head (+ MTP weights when the config declares ``mtp_num_hidden_layers``).

    ``lm_head.weight [V, D]`` exists only when the top-level ``tie_word_embeddings`` is false; otherwise
    logits use ``embed_tokens`` (pitfall 24). ``dtype`` is the activation dtype, ``param_dtype`` the storage dtype
    (default: ``dtype``). ``gdn_chunk_size`` is the chunk length of the prefill delta rule (static).
    ``with_mtp``: build the MTP weights (default: iff the config declares MTP layers); False for a checkpoint
    whose ``mtp.*`` tensors were stripped (then load with ``ignore_prefixes=("mtp.",)`` if any remain).
    ``rules`` (fit them with ``cortex_jax.sharding.rules_for``) and ``mesh`` drive the activation sharding
    constraints (``Sharder``); with ``mesh=None`` the constraints follow ``jax.set_mesh`` if set, else none.
    """

    def __init__(
        self,
        cfg: Qwen36Config,
        *,
        dtype: DType = jnp.float32,
        param_dtype: DType | None = None,
        rngs: nnx.Rngs | None = None,
        rules: AxisRules | None = None,
        gdn_chunk_size: int = 64,
        with_mtp: bool | None = None,
        mesh: Any = None,
    ):
        param_dtype = dtype if param_dtype is None else param_dtype
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.config = cfg
        self.dtype = dtype
        self.rules = rules or AxisRules()  # kept for the loader / steps; modules only name logical axes
        shard = Sharder(self.rules, mesh)  # activation constraints from the same table
        text = cfg.text
        self.model = Qwen36TextModel(
            text, dtype=dtype, param_dtype=param_dtype, rngs=rngs, chunk_size=gdn_chunk_size, shard=shard
        )
        self.tied = bool(cfg.tie_word_embeddings)
        self.lm_head = (
            None
            if self.tied
            else Linear(
                text.hidden_size,
                text.vocab_size,
                ("embed", "vocab"),
                dtype=dtype,
                param_dtype=param_dtype,
                rngs=rngs,
            )
        )
        n_mtp = text.mtp_num_hidden_layers if with_mtp is None or with_mtp else 0
        self.mtp = (
            Qwen36MTP(text, n_mtp, dtype=dtype, param_dtype=param_dtype, rngs=rngs, shard=shard) if n_mtp > 0 else None
        )

    def embed(self, tokens: Array) -> Array:
        """``[B, T]`` token ids → ``[B, T, D]`` embeddings in the activation dtype (for splicing images
        in)."""
        return self.model.embed_tokens(tokens)

    def __call__(
        self,
        tokens: Array,
        positions: Array,
        valid: Array,
        cache: HybridCache,
        input_embeds: Array | None = None,
    ) -> tuple[Array, HybridCache]:
        h = self.embed(tokens) if input_embeds is None else input_embeds.astype(self.dtype)
        return self.model(h, positions, valid, cache)

    def logits(self, h: Array) -> Array:
        """Final hidden states (after ``norm``) ``[..., D]`` → logits ``[..., V]`` float32.

        The matmul takes model-dtype inputs and accumulates in fp32 (HF rounds bf16 logits to bf16; we keep
        fp32 for sampling — the only intentional deviation, invisible in fp32 parity).
        """
        if self.tied:
            return self.model.embed_tokens.attend(h)
        k = self.lm_head.kernel[...]
        return jnp.einsum(
            "...d,dv->...v", h.astype(self.dtype), k.astype(self.dtype), preferred_element_type=jnp.float32
        )
