"""Published Qwen3.6 configurations as HF ``config.json`` text-config dicts, for benchmarks and tools that need the
real shapes without a checkpoint (``Qwen36Config.from_hf(QWEN36_27B_TEXT)``).

``QWEN36_27B_TEXT``: the 27B text model (64 layers: every 4th gated full attention, the rest Gated DeltaNet;
width 5120, FFN 17408, 24 query / 4 KV heads of 256, GDN 16 key / 48 value heads of 128, vocab 248,320, untied
head; partial interleaved mRoPE over a quarter of each head).
"""

from __future__ import annotations

from typing import Any

QWEN36_27B_TEXT: dict[str, Any] = dict(
    model_type="qwen3_5_text",
    vocab_size=248320,
    hidden_size=5120,
    intermediate_size=17408,
    num_hidden_layers=64,
    layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(64)],
    num_attention_heads=24,
    num_key_value_heads=4,
    head_dim=256,
    linear_num_key_heads=16,
    linear_num_value_heads=48,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_conv_kernel_dim=4,
    rms_norm_eps=1e-6,
    max_position_embeddings=262144,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [11, 11, 10], "mrope_interleaved": True},
    tie_word_embeddings=False,
    eos_token_id=248044,
)
