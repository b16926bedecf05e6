"""Tiny HF Qwen3.6 (``qwen3_5``) checkpoints built with transformers, for parity and loader tests.

Stable helpers other test areas import:

* :func:`tiny_text_config_dict` — the reference §9 tiny text config (D=64, H=4, Hkv=2, hd=64, Hk=2, dk=dv=16,
  ffn 128, vocab 1024, θ=1e7, mrope [3,3,2]) with ``Hv = Hk · value_heads_per_key``.
* :func:`tiny_vision_config_dict` — ViT depth 2, hidden 32, heads 2, ffn 64, out = text width, 8×8 pos table.
* :func:`make_tiny_hf_checkpoint` — random weights (seeded, perturbed away from HF's init so norms, A_log,
  dt_bias and the conv have teeth), saved with ``save_pretrained`` (``config.json`` + ``model.safetensors`` or
  shards + index). ``vision=True`` saves ``Qwen3_5ForConditionalGeneration`` (VLM keys
  ``model.language_model.*``, ``model.visual.*``, ``lm_head.weight``); ``vision=False`` saves
  ``Qwen3_5ForCausalLM`` (``model.*``). ``mtp=True`` appends random ``mtp.*`` tensors as real checkpoints ship
  them (HF never instantiates the MTP head, so ``save_pretrained`` cannot write them).
* :func:`load_hf_model` — the saved checkpoint as an HF torch model in eval mode (fp32, eager attention).

Requires torch and transformers (test extras); imported lazily so a plain ``import tests.reference`` is cheap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TINY_TEXT = dict(
    vocab_size=1024,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=4096,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 1e7,
        "partial_rotary_factor": 0.25,
        "mrope_section": [3, 3, 2],
        "mrope_interleaved": True,
    },
    bos_token_id=None,
    eos_token_id=1023,
    pad_token_id=None,
)

TINY_VISION = dict(
    depth=2,
    hidden_size=32,
    num_heads=2,
    intermediate_size=64,
    hidden_act="gelu_pytorch_tanh",
    in_channels=3,
    patch_size=16,
    temporal_patch_size=2,
    spatial_merge_size=2,
    num_position_embeddings=64,
)


def tiny_text_config_dict(*, value_heads_per_key: int = 2, **overrides: Any) -> dict[str, Any]:
    """The tiny ``text_config`` dict (``model_type`` ``qwen3_5_text``); ``overrides`` replace fields."""
    d = json.loads(json.dumps(TINY_TEXT))
    d["linear_num_value_heads"] = d["linear_num_key_heads"] * value_heads_per_key
    d.update(overrides)
    if "layer_types" not in d:
        interval = d.pop("full_attention_interval", 4)
        d["layer_types"] = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(d["num_hidden_layers"])
        ]
    d["model_type"] = "qwen3_5_text"
    return d


def tiny_vision_config_dict(out_hidden_size: int = 64, **overrides: Any) -> dict[str, Any]:
    d = dict(TINY_VISION, out_hidden_size=out_hidden_size)
    d.update(overrides)
    return d


def _perturb(model, seed: int) -> None:
    """Move every weight away from HF's init with a fixed seed: norms/offsets get O(0.1–0.3) noise (a (1+w)
    vs w mix-up then shows), dt_bias/A_log spread out, matrices get unit-scale fan-in init so logits are
    O(1)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if name.endswith("A_log"):
                p.copy_(torch.log(torch.rand(p.shape, generator=gen) * 8 + 0.5))
            elif name.endswith("dt_bias"):
                p.copy_(noise * 0.5 + 1.0)
            elif p.ndim == 1:  # norm weights and biases
                p.add_(noise * 0.2)
            elif "conv1d" in name:
                p.copy_(noise * 0.5)
            elif "embed_tokens" in name:
                p.copy_(noise)
            else:  # Linear [out, in] (and ViT conv): fan-in scaled
                fan_in = p[0].numel()
                p.copy_(noise * fan_in**-0.5)


def make_tiny_hf_checkpoint(
    path: str | Path,
    *,
    tie: bool = False,
    vision: bool = True,
    value_heads_per_key: int = 2,
    seed: int = 0,
    mtp: bool = False,
    dtype: str = "float32",
    max_shard_size: str | int | None = None,
    vision_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> Path:
    """Build, perturb and save a tiny random checkpoint at ``path``; returns ``path``.

    ``overrides`` go to the text config, ``vision_overrides`` to the vision config. ``dtype``: "float32" |
    "bfloat16" | "float16" (storage dtype).
    ``max_shard_size`` (e.g. ``"20KB"``) forces a sharded save with ``model.safetensors.index.json``.
    """
    import torch
    from transformers import (
        Qwen3_5Config,
        Qwen3_5ForCausalLM,
        Qwen3_5ForConditionalGeneration,
        Qwen3_5TextConfig,
    )

    path = Path(path)
    torch.manual_seed(seed)
    text = tiny_text_config_dict(value_heads_per_key=value_heads_per_key, **overrides)
    if mtp:
        text["mtp_num_hidden_layers"] = 1
    if vision:
        text.pop("model_type")
        cfg = Qwen3_5Config(
            text_config=text,
            vision_config=tiny_vision_config_dict(text["hidden_size"], **(vision_overrides or {})),
            tie_word_embeddings=tie,
        )
        model = Qwen3_5ForConditionalGeneration(cfg)
    else:
        text.pop("model_type")
        cfg = Qwen3_5TextConfig(**text, tie_word_embeddings=tie)
        model = Qwen3_5ForCausalLM(cfg)
    _perturb(model, seed)
    if tie:
        model.tie_weights()
    model = model.to(getattr(torch, dtype)).eval()
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(path, safe_serialization=True, **kw)
    if mtp:
        _append_mtp(path, cfg.text_config if vision else cfg, seed, getattr(torch, dtype))
    return path


def _append_mtp(path: Path, text_cfg: Any, seed: int, dtype: Any) -> None:
    """Write random ``mtp.*`` tensors (reference §10 layout) into their own shard and register it."""
    import torch
    from safetensors.torch import load_file, save_file

    gen = torch.Generator().manual_seed(seed + 1)
    d, h, hkv, hd, f = (
        text_cfg.hidden_size,
        text_cfg.num_attention_heads,
        text_cfg.num_key_value_heads,
        text_cfg.head_dim,
        text_cfg.intermediate_size,
    )
    shapes = {
        "mtp.fc.weight": (d, 2 * d),
        "mtp.pre_fc_norm_embedding.weight": (d,),
        "mtp.pre_fc_norm_hidden.weight": (d,),
        "mtp.norm.weight": (d,),
        "mtp.layers.0.input_layernorm.weight": (d,),
        "mtp.layers.0.post_attention_layernorm.weight": (d,),
        "mtp.layers.0.self_attn.q_proj.weight": (2 * h * hd, d),
        "mtp.layers.0.self_attn.k_proj.weight": (hkv * hd, d),
        "mtp.layers.0.self_attn.v_proj.weight": (hkv * hd, d),
        "mtp.layers.0.self_attn.o_proj.weight": (d, h * hd),
        "mtp.layers.0.self_attn.q_norm.weight": (hd,),
        "mtp.layers.0.self_attn.k_norm.weight": (hd,),
        "mtp.layers.0.mlp.gate_proj.weight": (f, d),
        "mtp.layers.0.mlp.up_proj.weight": (f, d),
        "mtp.layers.0.mlp.down_proj.weight": (d, f),
    }
    tensors = {k: (torch.randn(s, generator=gen) * 0.1).to(dtype) for k, s in shapes.items()}
    index = path / "model.safetensors.index.json"
    if index.is_file():
        meta = json.loads(index.read_text())
        save_file(tensors, path / "model-mtp.safetensors", metadata={"format": "pt"})
        meta["weight_map"].update({k: "model-mtp.safetensors" for k in tensors})
        index.write_text(json.dumps(meta, indent=2))
    else:
        single = path / "model.safetensors"
        merged = load_file(single)
        merged.update(tensors)
        save_file(merged, single, metadata={"format": "pt"})


def load_hf_model(path: str | Path, *, attn_implementation: str = "eager"):
    """The checkpoint at ``path`` as an fp32 HF model in eval mode (CausalLM or ConditionalGeneration)."""
    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5ForConditionalGeneration

    cfg = json.loads((Path(path) / "config.json").read_text())
    cls = Qwen3_5ForConditionalGeneration if cfg["model_type"] == "qwen3_5" else Qwen3_5ForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32, attn_implementation=attn_implementation).eval()
