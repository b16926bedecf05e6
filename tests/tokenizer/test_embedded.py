"""The embedded qwen3.6-tiny checkpoint: complete, loadable by transformers, written once and atomically."""

import json

import numpy as np
import pytest
from safetensors import safe_open

from models.qwen36 import embedded
from models.qwen36.config import LayerKind, Qwen36Config
from models.qwen36.embedded import EMBEDDED_MODEL_ID, ensure_embedded_checkpoint, tensor_shapes

FILES = {
    "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
    "generation_config.json", "preprocessor_config.json",
}


def test_files_and_config(ckpt_dir):
    assert ckpt_dir.name == f"{EMBEDDED_MODEL_ID}-v{embedded.CHECKPOINT_VERSION}"
    assert {p.name for p in ckpt_dir.iterdir()} >= FILES
    cfg = Qwen36Config.from_dir(ckpt_dir)
    t = cfg.text
    assert cfg.tie_word_embeddings and t.vocab_size == 248320
    assert set(t.layer_kinds) == {LayerKind.LINEAR, LayerKind.FULL}
    assert t.linear_num_value_heads == 2 * t.linear_num_key_heads
    assert sum(t.mrope_section) == t.rotary_dim // 2
    assert t.rope_theta == 1e7 and t.mtp_num_hidden_layers == 1
    assert cfg.vision.out_hidden_size == t.hidden_size and cfg.vision.depth == 2
    gen = json.loads((ckpt_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [248046, 248044]
    tc = json.loads((ckpt_dir / "tokenizer_config.json").read_text())
    template = embedded.CHAT_TEMPLATE_PATH.read_text()
    assert tc["chat_template"] == (ckpt_dir / "chat_template.jinja").read_text() == template
    assert tc["added_tokens_decoder"]["248068"] == {
        "content": "<think>", "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
        "special": False,
    }


def test_safetensors_layout(ckpt_dir):
    expected = {k: s for k, s, _ in tensor_shapes()}
    with safe_open(str(ckpt_dir / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert keys == set(expected)
        for k in keys:
            sl = f.get_slice(k)
            assert tuple(sl.get_shape()) == expected[k], k
            assert sl.get_dtype() == "BF16", k
    assert "lm_head.weight" not in keys  # tied
    assert {k for k in keys if k.startswith("mtp.")} >= {
        "mtp.fc.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight",
        "mtp.norm.weight", "mtp.layers.0.self_attn.q_proj.weight", "mtp.layers.0.mlp.down_proj.weight",
    }
    assert any(k.startswith("model.visual.blocks.1.") for k in keys)


def test_values_are_the_seeded_recipe(ckpt_dir):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    sd = load_file(str(ckpt_dir / "model.safetensors"))
    ref = embedded.embedded_weights()
    for k in ("model.language_model.layers.0.linear_attn.A_log", "model.visual.merger.linear_fc2.bias",
              "model.language_model.layers.3.self_attn.q_norm.weight", "mtp.fc.weight"):
        want = torch.from_numpy(ref[k]).to(torch.bfloat16)  # torch's own fp32 -> bf16 rounding
        assert torch.equal(sd[k], want), k
    a = sd["model.language_model.layers.0.linear_attn.A_log"].float().exp()
    assert bool(((a >= 0.99) & (a <= 16.1)).all())
    emb = sd["model.language_model.embed_tokens.weight"].float()
    assert abs(float(emb.std()) - 0.02) < 1e-3


def test_transformers_loads_it(ckpt_dir, hf_tok, tok):
    torch = pytest.importorskip("torch")
    from transformers import Qwen3_5ForConditionalGeneration

    model, info = Qwen3_5ForConditionalGeneration.from_pretrained(
        str(ckpt_dir), output_loading_info=True, dtype=torch.float32
    )
    assert info["missing_keys"] == set() and info["unexpected_keys"] == set()
    assert info["mismatched_keys"] == set() and not info["error_msgs"]
    lm = model.model.language_model
    assert model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr()
    ids = tok.render_chat_ids([{"role": "user", "content": "Hello"}])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 248320) and bool(torch.isfinite(logits).all())


def test_auto_tokenizer_encodes_the_same(hf_tok, tok):
    from tests.tokenizer.test_tokenizer import CORPUS, random_texts

    assert hf_tok.eos_token == "<|im_end|>" and hf_tok.pad_token == "<|endoftext|>"
    for text in CORPUS + random_texts(500, seed=3):
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text), text
    # Known divergence (docs/tokenizer.md): transformers' Qwen3_5Tokenizer rebuilds the BPE from vocab and
    # merges without ignore_merges, so a pre-token that is exactly one of the ~200 merge-unreachable tokens
    # splits.
    assert tok.encode("加拿大") == [108918]
    assert hf_tok.encode("加拿大", add_special_tokens=False) != [108918]


def test_image_processor_config(ckpt_dir):
    from transformers import AutoImageProcessor

    proc = AutoImageProcessor.from_pretrained(str(ckpt_dir))
    assert proc.patch_size == 16 and proc.temporal_patch_size == 2 and proc.merge_size == 2
    assert list(proc.image_mean) == [0.5, 0.5, 0.5] and list(proc.image_std) == [0.5, 0.5, 0.5]


def test_written_once_and_atomically(ckpt_dir, tmp_path, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()}
    assert ensure_embedded_checkpoint(ckpt_dir.parent) == ckpt_dir
    assert {p.name: p.stat().st_mtime_ns for p in ckpt_dir.iterdir()} == before
    assert not [p for p in ckpt_dir.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left behind

    # The environment variable picks the cache root; a failed write leaves nothing behind.
    monkeypatch.setenv("CORTEX_JAX_CACHE", str(tmp_path / "env-root"))
    monkeypatch.setattr(embedded, "write_safetensors_bf16", _boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ensure_embedded_checkpoint()
    root = tmp_path / "env-root"
    assert root.is_dir() and list(root.iterdir()) == []


def _boom(*_args, **_kwargs):
    raise RuntimeError("disk full")


def test_bf16_rounding_is_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, 1e-40], dtype=np.float32)
    bits = embedded._to_bf16_bits(x)
    back = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(back[:4], [1.0, 1.0, 1.015625, -2.5])  # ties go to the even mantissa


# CHECKPOINT_VERSION → content_fingerprint(). A cached checkpoint is reused by version, so any change to what
# is written must bump the version (and add its fingerprint here), or users would keep loading the stale copy.
FINGERPRINTS = {1: "5b4595d94cf7c29f"}


def test_version_bumped_with_content():
    assert embedded.content_fingerprint() == FINGERPRINTS.get(embedded.CHECKPOINT_VERSION), (
        "the embedded checkpoint's content changed: bump CHECKPOINT_VERSION and record the new fingerprint"
    )
