"""What the embedded ``qwen3.6-tiny`` checkpoint contains: its config files and its tensor layout.

``config.json``: ``model_type: qwen3_5`` with every layer kind (8 layers, ``[linear ×3, full] ×2``), the real
vocabulary size (248,320 rows, tied with the LM head to keep the file small), a 2-block ViT and one MTP layer.
Widths are tiny (hidden 64) so it runs on a laptop CPU. ``embedded.py`` writes these; any change here changes
the checkpoint's content fingerprint, so ``CHECKPOINT_VERSION`` must be bumped with it.
"""

from __future__ import annotations

from collections.abc import Iterator

TEXT_CONFIG = {
    "model_type": "qwen3_5_text",
    "vocab_size": 248320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 8,
    "layer_types": (["linear_attention"] * 3 + ["full_attention"]) * 2,
    "full_attention_interval": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "attention_bias": False,
    "attn_output_gate": True,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10_000_000.0,
        "partial_rotary_factor": 0.25,  # rotary_dim 16 → 8 frequencies = sum(mrope_section)
        "mrope_section": [3, 3, 2],
        "mrope_interleaved": True,
    },
    "max_position_embeddings": 8192,
    "initializer_range": 0.02,
    "tie_word_embeddings": True,
    "bos_token_id": 248044,
    "eos_token_id": 248044,
    "pad_token_id": None,
    "attention_dropout": 0.0,
    "mtp_num_hidden_layers": 1,
    "mtp_use_dedicated_embeddings": False,
    "dtype": "bfloat16",
}

VISION_CONFIG = {
    "model_type": "qwen3_5_vision",
    "depth": 2,
    "hidden_size": 32,
    "num_heads": 2,
    "intermediate_size": 64,
    "hidden_act": "gelu_pytorch_tanh",
    "in_channels": 3,
    "patch_size": 16,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
    "out_hidden_size": 64,
    "num_position_embeddings": 64,
    "initializer_range": 0.02,
    "deepstack_visual_indexes": [],
}

CONFIG = {
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "model_type": "qwen3_5",
    "text_config": TEXT_CONFIG,
    "vision_config": VISION_CONFIG,
    "image_token_id": 248056,
    "video_token_id": 248057,
    "vision_start_token_id": 248053,
    "vision_end_token_id": 248054,
    "tie_word_embeddings": True,
    "dtype": "bfloat16",
}

GENERATION_CONFIG = {
    "bos_token_id": 248044,
    "eos_token_id": [248046, 248044],
    "pad_token_id": 248044,
    "do_sample": True,
    "temperature": 0.6,
    "top_p": 0.95,
    "top_k": 20,
}

# Qwen2-VL image processor as Qwen3.5 checkpoints publish it, except longest_edge: 1024² pixels (≤ 1024 image
# tokens) instead of 4096², so one large image cannot stall the CPU-sized model.
PREPROCESSOR_CONFIG = {
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen3VLProcessor",
    "do_convert_rgb": True,
    "do_resize": True,
    "resample": 3,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "size": {"shortest_edge": 65536, "longest_edge": 1048576},
    "min_pixels": 65536,
    "max_pixels": 1048576,
}


def tensor_shapes(text: dict | None = None, vision: dict | None = None) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """Every checkpoint tensor as ``(key, shape, init)``; init ∈ normal | norm1p | ones | a_log. ``text`` /
    ``vision``: other configs of the same layout (tests build head-count variants with them)."""
    t, v = text or TEXT_CONFIG, vision or VISION_CONFIG
    d, f, hd = t["hidden_size"], t["intermediate_size"], t["head_dim"]
    h, hkv = t["num_attention_heads"], t["num_key_value_heads"]
    hk, hv, dk, dv = (t["linear_num_key_heads"], t["linear_num_value_heads"], t["linear_key_head_dim"],
                      t["linear_value_head_dim"])
    conv_dim = 2 * hk * dk + hv * dv

    def attention_layer(p: str) -> Iterator[tuple[str, tuple[int, ...], str]]:
        yield f"{p}.self_attn.q_proj.weight", (2 * h * hd, d), "normal"  # per head [query | gate]
        yield f"{p}.self_attn.k_proj.weight", (hkv * hd, d), "normal"
        yield f"{p}.self_attn.v_proj.weight", (hkv * hd, d), "normal"
        yield f"{p}.self_attn.o_proj.weight", (d, h * hd), "normal"
        yield f"{p}.self_attn.q_norm.weight", (hd,), "norm1p"
        yield f"{p}.self_attn.k_norm.weight", (hd,), "norm1p"

    def mlp_and_norms(p: str) -> Iterator[tuple[str, tuple[int, ...], str]]:
        yield f"{p}.mlp.gate_proj.weight", (f, d), "normal"
        yield f"{p}.mlp.up_proj.weight", (f, d), "normal"
        yield f"{p}.mlp.down_proj.weight", (d, f), "normal"
        yield f"{p}.input_layernorm.weight", (d,), "norm1p"
        yield f"{p}.post_attention_layernorm.weight", (d,), "norm1p"

    lm = "model.language_model"
    yield f"{lm}.embed_tokens.weight", (t["vocab_size"], d), "normal"
    for i, kind in enumerate(t["layer_types"]):
        p = f"{lm}.layers.{i}"
        if kind == "full_attention":
            yield from attention_layer(p)
        else:
            a = f"{p}.linear_attn"
            yield f"{a}.in_proj_qkv.weight", (conv_dim, d), "normal"
            yield f"{a}.in_proj_z.weight", (hv * dv, d), "normal"
            yield f"{a}.in_proj_b.weight", (hv, d), "normal"
            yield f"{a}.in_proj_a.weight", (hv, d), "normal"
            yield f"{a}.conv1d.weight", (conv_dim, 1, t["linear_conv_kernel_dim"]), "normal"
            yield f"{a}.dt_bias", (hv,), "ones"
            yield f"{a}.A_log", (hv,), "a_log"
            yield f"{a}.norm.weight", (dv,), "ones"
            yield f"{a}.out_proj.weight", (d, hv * dv), "normal"
        yield from mlp_and_norms(p)
    yield f"{lm}.norm.weight", (d,), "norm1p"
    # lm_head.weight is absent: tie_word_embeddings shares embed_tokens.

    vh, vf, vo = v["hidden_size"], v["intermediate_size"], v["out_hidden_size"]
    merged = vh * v["spatial_merge_size"] ** 2
    vis = "model.visual"
    yield f"{vis}.patch_embed.proj.weight", (vh, v["in_channels"], v["temporal_patch_size"], v["patch_size"],
                                             v["patch_size"]), "normal"
    yield f"{vis}.patch_embed.proj.bias", (vh,), "normal"
    yield f"{vis}.pos_embed.weight", (v["num_position_embeddings"], vh), "normal"
    for n in range(v["depth"]):
        b = f"{vis}.blocks.{n}"
        for norm in ("norm1", "norm2"):
            yield f"{b}.{norm}.weight", (vh,), "ones"
            yield f"{b}.{norm}.bias", (vh,), "normal"
        for name, shape in (("attn.qkv", (3 * vh, vh)), ("attn.proj", (vh, vh)),
                            ("mlp.linear_fc1", (vf, vh)), ("mlp.linear_fc2", (vh, vf))):
            yield f"{b}.{name}.weight", shape, "normal"
            yield f"{b}.{name}.bias", shape[:1], "normal"
    yield f"{vis}.merger.norm.weight", (vh,), "ones"
    yield f"{vis}.merger.norm.bias", (vh,), "normal"
    yield f"{vis}.merger.linear_fc1.weight", (merged, merged), "normal"
    yield f"{vis}.merger.linear_fc1.bias", (merged,), "normal"
    yield f"{vis}.merger.linear_fc2.weight", (vo, merged), "normal"
    yield f"{vis}.merger.linear_fc2.bias", (vo,), "normal"

    # MTP head: fc over [embedding | hidden], its norms, and one gated full-attention layer.
    yield "mtp.fc.weight", (d, 2 * d), "normal"
    for name in ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm"):
        yield f"mtp.{name}.weight", (d,), "norm1p"
    for i in range(t["mtp_num_hidden_layers"]):
        yield from attention_layer(f"mtp.layers.{i}")
        yield from mlp_and_norms(f"mtp.layers.{i}")
