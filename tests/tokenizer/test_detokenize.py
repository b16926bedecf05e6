"""Incremental detokenizer: never half a character, and the pieces always add up to ``decode``."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, pre_tokenizers

from cortex_jax.engine.detokenize import IncrementalDetokenizer
from cortex_jax.engine.tokenizer import Tokenizer, bytes_to_unicode

TEXTS = [
    "Hello, world!",
    "家庭 👨‍👩‍👧‍👦 and 加拿大的天气 🫠🇯🇵",
    "ﬁ ข้าวผัด 한국어 😀😀😀 ١٢٣",
    "<think>\nplan\n</think>\n\nanswer<|im_end|>",
]


def stream(det, ids):
    return [det.push(i) for i in ids] + [det.flush()]


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_stream_is_whole_characters(tok, text):
    ids = tok.encode(text)
    pieces = stream(IncrementalDetokenizer(tok), ids)
    assert "".join(pieces) == tok.decode(ids) == text
    assert all("\ufffd" not in p for p in pieces)


def test_character_split_across_tokens_is_held_back(tok):
    # A rare character spans several byte tokens: nothing comes out until its last byte arrives.
    ids = tok.encode("🫠")
    assert len(ids) > 1
    det = IncrementalDetokenizer(tok)
    assert [det.push(i) for i in ids] == [""] * (len(ids) - 1) + ["🫠"]
    # Single byte tokens (id = rank of the byte's symbol) behave the same way.
    b = [tok.token_to_id(ch) for ch in "ðŁĺ¢"]  # the byte-level symbols of F0 9F 98 A2 = 😢
    det = IncrementalDetokenizer(tok)
    assert [det.push(i) for i in b] == ["", "", "", "😢"]


def test_invalid_bytes_and_flush(tok):
    byte = {bytes([i]): tok.token_to_id(c) for i, c in enumerate(bytes_to_unicode())}
    det = IncrementalDetokenizer(tok)
    assert det.push(byte[b"\x80"]) == "\ufffd"  # a lone continuation byte is invalid at once
    assert det.push(byte[b"\xe4"]) == ""  # the start of a 3-byte character: held
    assert det.flush() == "\ufffd"  # ... and cut off by the end of the sequence


def test_skip_special_tokens_and_prompt_context(tok):
    ids = tok.encode("hi<|im_end|>")
    assert "".join(stream(IncrementalDetokenizer(tok, skip_special_tokens=True), ids)) == "hi"
    assert "".join(stream(IncrementalDetokenizer(tok), ids)) == "hi<|im_end|>"
    # A character split across the prompt/completion boundary completes without leaking prompt text.
    emoji = tok.encode("🫠")
    det = IncrementalDetokenizer(tok, prompt_ids=tok.encode("prompt ") + emoji[:1])
    assert "".join(stream(det, emoji[1:] + tok.encode("!"))) == "🫠!"


byte_ids = st.integers(0, 255)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(byte_ids, st.integers(0, 248076)), max_size=24))
def test_pieces_always_add_up_to_decode(tok, ids):
    """Any id sequence (random bytes, invalid UTF-8, special tokens): concatenation equals decode."""
    pieces = stream(IncrementalDetokenizer(tok), ids)
    assert "".join(pieces) == tok.decode(ids)


# ---- window strategy: a SentencePiece-style tokenizer with <0xNN> byte-fallback tokens ---------------------


@pytest.fixture(scope="module")
def sp_tok() -> Tokenizer:
    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}}
    for piece in ["▁", "▁hello", "▁world", "h", "e", "l", "o", "w", "r", "d", "▁a", "é"]:
        vocab.setdefault(piece, len(vocab))
    # No merges: every character is its own piece, and characters outside the vocabulary fall back to bytes.
    backend = RustTokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    backend.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return Tokenizer(backend, name="sp-byte-fallback")


def sp_ids(sp_tok, text):
    return sp_tok.backend.encode(text, add_special_tokens=False).ids


def test_window_strategy_byte_fallback(sp_tok):
    assert not sp_tok.is_byte_level
    text = "hello 世界 😀 é wörld"
    ids = sp_ids(sp_tok, text)
    assert any(1 <= i <= 256 for i in ids)  # byte-fallback tokens are in play
    det = IncrementalDetokenizer(sp_tok)
    pieces = stream(det, ids)
    assert "".join(pieces) == sp_tok.decode(ids)
    assert all("\ufffd" not in p for p in pieces)
    emoji = sp_ids(sp_tok, "😀")[-4:]
    det = IncrementalDetokenizer(sp_tok, prompt_ids=sp_ids(sp_tok, "hello"))
    assert [det.push(i) for i in emoji] == ["", "", "", "😀"]
    assert len(det._ids) <= 5  # only a short window is ever kept


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="helowrd é世界😀🫠\n", max_size=16), st.lists(st.integers(0, 268), max_size=12))
def test_window_strategy_adds_up(sp_tok, text, ids):
    text_ids = sp_ids(sp_tok, text)
    pieces = stream(IncrementalDetokenizer(sp_tok), text_ids)
    assert "".join(pieces) == sp_tok.decode(text_ids)
    assert all("\ufffd" not in p for p in pieces)
    # Arbitrary ids, invalid byte runs included: never raises. (ByteFallback replaces every byte of a run that
    # contains invalid UTF-8, even valid leading ones, so only a one-shot decode can match it exactly there.)
    pieces = stream(IncrementalDetokenizer(sp_tok), ids)
    if "\ufffd" not in sp_tok.decode(ids):
        assert "".join(pieces) == sp_tok.decode(ids)
