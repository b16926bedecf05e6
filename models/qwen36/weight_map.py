"""HF checkpoint key → nnx state path + transform, as data (STYLE F13).

Handles both layouts:

* VLM (``Qwen3_5ForConditionalGeneration``, what Qwen3.6 ships): ``model.language_model.*``,
  ``lm_head.weight``, ``mtp.*``, ``model.visual.*``;
* text-only (``Qwen3_5ForCausalLM``): ``model.*``, ``lm_head.weight``.

Both map onto ``Qwen36ForCausalLM``'s paths ``model.*``, ``lm_head.kernel``, ``mtp.*`` (and ``visual.*`` when
the model carries a vision tower, through rules the vision module provides). The table is nearly the identity
because the module attribute names mirror HF's; the only transforms are Linear ``[out, in] → kernel [in,
out]`` and the depthwise conv ``[C, 1, K] → [K, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cortex_jax.checkpoint import CONV1D, IDENTITY, TRANSPOSE, Rule, Transform, permuted

# (HF suffix regex inside one decoder layer, nnx suffix template, transform)
_LAYER: tuple[tuple[str, str, Transform], ...] = (
    (r"self_attn\.(q_proj|k_proj|v_proj|o_proj)\.weight", r"self_attn.\g<s1>.kernel", TRANSPOSE),
    (r"self_attn\.(q_norm|k_norm)\.weight", r"self_attn.\g<s1>.weight", IDENTITY),
    (
        r"linear_attn\.(in_proj_z|in_proj_b|in_proj_a|out_proj)\.weight",
        r"linear_attn.\g<s1>.kernel",
        TRANSPOSE,
    ),
    (r"linear_attn\.(A_log|dt_bias)", r"linear_attn.\g<s1>", IDENTITY),
    (r"linear_attn\.norm\.weight", r"linear_attn.norm.weight", IDENTITY),
    (r"mlp\.(gate_proj|up_proj|down_proj)\.weight", r"mlp.\g<s1>.kernel", TRANSPOSE),
    (r"(input_layernorm|post_attention_layernorm)\.weight", r"\g<s1>.weight", IDENTITY),
)

_TEXT = r"model\.(?:language_model\.)?"  # VLM and text-only prefixes both land on ``model.``

NO_VISION_REASON = (
    "present in the checkpoint, no vision tower in this model "
    "(load with ignore_prefixes=('model.visual.',) to skip the vision weights on purpose)"
)


def gdn_channel_perm(n_k: int, dk: int, n_v: int, dv: int) -> np.ndarray:
    """Conv-channel order of our ``in_proj_qkv`` / ``conv1d`` / conv state: entry ``i`` is the HF channel that
    our channel ``i`` holds.

    HF's order is flat ``[q (Hk·dk) | k (Hk·dk) | v (Hv·dv)]``; ours is grouped by key head
    ``[q_0 k_0 v_0 … v_{r-1} | q_1 k_1 v_r … | …]`` (r = Hv/Hk value heads per key head, each group
    ``2·dk + r·dv`` channels). A contiguous split of the grouped axis over tp (tp | Hk) gives every device whole
    key heads with their own value heads, so the projection, conv and delta rule run without communication.
    """
    r = n_v // n_k
    key_dim = n_k * dk
    groups = []
    for h in range(n_k):
        groups.append(np.arange(h * dk, (h + 1) * dk))  # q_h
        groups.append(key_dim + np.arange(h * dk, (h + 1) * dk))  # k_h
        groups.append(2 * key_dim + np.arange(h * r * dv, (h + 1) * r * dv))  # v of key head h's value heads
    return np.concatenate(groups)


def _gdn_rules(src_prefix: str, dst_prefix: str, text: Any) -> list[Rule]:
    perm = gdn_channel_perm(
        text.linear_num_key_heads, text.linear_key_head_dim, text.linear_num_value_heads, text.linear_value_head_dim
    )
    layer = rf"{src_prefix}layers\.(?P<idx>\d+)\.linear_attn\."
    dst = rf"{dst_prefix}layers.\g<idx>.linear_attn."
    return [
        Rule(layer + r"in_proj_qkv\.weight", dst + "in_proj_qkv.kernel", permuted(TRANSPOSE, 1, perm, "qkv-grouped")),
        Rule(layer + r"conv1d\.weight", dst + "conv1d.kernel", permuted(CONV1D, 1, perm, "conv1d-grouped")),
    ]


def _layer_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    rules = []
    for suffix, target, tf in _LAYER:
        # rename the suffix's own groups to s1 so the layer index can stay group ``idx``
        suffix = suffix.replace("(", "(?P<s1>", 1) if "(" in suffix else suffix
        rules.append(Rule(rf"{src_prefix}layers\.(?P<idx>\d+)\.{suffix}", rf"{dst_prefix}layers.\g<idx>.{target}", tf))
    return rules


def qwen36_weight_map(
    *, tied: bool, text: Any, vision_rules: Sequence[Rule] | None = None
) -> tuple[Rule, ...]:
    """The rule table for ``Qwen36ForCausalLM``; ``text`` (the ``TextConfig``) sizes the GDN channel reordering.

    ``tied``: the model has no ``lm_head`` (a checkpoint that still ships ``lm_head.weight`` has it skipped
    and logged). ``vision_rules``: rules for ``model.visual.*`` when the model carries a vision tower;
    ``None`` makes every ``model.visual.*`` key an error that says so (unless the loader is told to ignore
    the prefix).
    """
    rules = [
        Rule(rf"{_TEXT}embed_tokens\.weight", "model.embed_tokens.embedding"),
        Rule(rf"{_TEXT}norm\.weight", "model.norm.weight"),
        *_layer_rules(_TEXT, "model."),
        *_gdn_rules(_TEXT, "model.", text),
        Rule(r"mtp\.fc\.weight", "mtp.fc.kernel", TRANSPOSE),
        Rule(r"mtp\.(pre_fc_norm_embedding|pre_fc_norm_hidden|norm)\.weight", r"mtp.\1.weight"),
        *_layer_rules(r"mtp\.", "mtp."),
    ]
    if tied:
        rules.append(Rule(r"lm_head\.weight", None, drop=True, reason="lm_head is tied to embed_tokens"))
    else:
        rules.append(Rule(r"lm_head\.weight", "lm_head.kernel", TRANSPOSE))
    if vision_rules is None:
        rules.append(Rule(r"model\.visual\..*", None, reason=NO_VISION_REASON))
    else:
        rules.extend(vision_rules)
    return tuple(rules)
