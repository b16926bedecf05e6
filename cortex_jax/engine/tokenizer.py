"""Tokenizer and chat template of an HF checkpoint directory: text ↔ token ids, messages → prompt.

``Tokenizer.from_dir`` reads the files every HF checkpoint ships: ``tokenizer.json`` (run by the Rust
``tokenizers`` library), ``tokenizer_config.json`` (eos and special tokens, optionally the chat template),
``chat_template.jinja`` (preferred over the config field, as in transformers) and, for stop tokens,
``generation_config.json`` and ``config.json``.

Templates render through ``chat_template.render_chat_template`` (transformers' Jinja environment); the
tiktoken → ``tokenizer.json`` conversion lives in ``tiktoken_conversion``. Both are re-exported here because
callers import them from this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as _RustTokenizer
from tokenizers import decoders

from cortex_jax.engine.chat_template import ChatTemplateError, render_chat_template
from cortex_jax.engine.tiktoken_conversion import bytes_to_unicode, tokenizer_json_from_tiktoken

__all__ = [
    "ChatTemplateError",
    "Tokenizer",
    "TokenizerLoadError",
    "bytes_to_unicode",
    "render_chat_template",
    "tokenizer_json_from_tiktoken",
]


class TokenizerLoadError(ValueError):
    """A checkpoint directory whose tokenizer files are missing or unreadable; the message names the file."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TokenizerLoadError(f"{path}: cannot read ({e})") from e
    if not isinstance(data, dict):
        raise TokenizerLoadError(f"{path}: expected a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    """tokenizer_config stores special tokens as a string or as an AddedToken dict ``{"content": ...}``."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _ids(value: Any) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, list | tuple):
        return [int(v) for v in value if isinstance(v, int)]
    return []


class Tokenizer:
    """Text ↔ ids for one checkpoint, plus its chat template and stop tokens.

    Thread-safe for encode/decode (the Rust tokenizer is immutable once built). ``vocab_size`` counts the
    tokenizer's ids (Qwen3.6: 248,077), which is smaller than the model's padded embedding (248,320).
    """

    def __init__(
        self,
        backend: _RustTokenizer,
        *,
        chat_template: str | None = None,
        eos_token: str | None = None,
        extra_eos_token_ids: Iterable[int] = (),
        special_tokens_map: Mapping[str, str] | None = None,
        name: str = "",
    ):
        self._tk = backend
        self.chat_template = chat_template
        self.name = name
        self.eos_token = eos_token
        self.special_tokens_map = dict(special_tokens_map or {})
        if eos_token is not None:
            self.special_tokens_map.setdefault("eos_token", eos_token)
        eos: set[int] = set()
        if eos_token is not None:
            eos_id = backend.token_to_id(eos_token)
            if eos_id is None:
                raise TokenizerLoadError(f"eos token {eos_token!r} is not in the vocabulary")
            eos.add(eos_id)
        eos.update(extra_eos_token_ids)
        self.eos_token_ids: frozenset[int] = frozenset(eos)
        decoder = backend.get_added_tokens_decoder()
        self.added_token_ids: frozenset[int] = frozenset(decoder)
        self.special_token_ids: frozenset[int] = frozenset(i for i, t in decoder.items() if t.special)
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._byte_level = isinstance(backend.decoder, decoders.ByteLevel)
        self._bytes_table: list[bytes] | None = None

    # ---- construction --------------------------------------------------------------------------------------
    @classmethod
    def from_dir(cls, ckpt_dir: str | Path, *, chat_template: str | None = None) -> Tokenizer:
        """Load ``tokenizer.json`` and friends from an HF checkpoint directory.

        ``chat_template`` overrides the checkpoint's template (for checkpoints that ship none).
        """
        d = Path(ckpt_dir)
        tj = d / "tokenizer.json"
        if not tj.is_file():
            raise TokenizerLoadError(f"{tj}: missing (only tokenizer.json checkpoints are supported)")
        try:
            backend = _RustTokenizer.from_file(str(tj))
        except Exception as e:  # the Rust side raises a bare Exception for malformed files
            raise TokenizerLoadError(f"{tj}: cannot load ({e})") from e

        cfg = _read_json(d / "tokenizer_config.json") if (d / "tokenizer_config.json").is_file() else {}
        template = chat_template
        if template is None and (d / "chat_template.jinja").is_file():
            template = (d / "chat_template.jinja").read_text(encoding="utf-8")
        if template is None:
            field = cfg.get("chat_template")
            if isinstance(field, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
                named = {t.get("name"): t.get("template") for t in field if isinstance(t, Mapping)}
                field = named.get("default") or next(iter(named.values()), None)
            template = field if isinstance(field, str) else None

        extra: list[int] = []
        for fname in ("generation_config.json", "config.json"):
            if (d / fname).is_file():
                data = _read_json(d / fname)
                extra += _ids(data.get("eos_token_id"))
                extra += _ids((data.get("text_config") or {}).get("eos_token_id"))
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        specials = {k: t for k in names if (t := _token_text(cfg.get(k)))}
        return cls(
            backend,
            chat_template=template,
            eos_token=specials.get("eos_token"),
            extra_eos_token_ids=extra,
            special_tokens_map=specials,
            name=d.name,
        )

    # ---- vocabulary ----------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def backend(self) -> _RustTokenizer:
        """The underlying ``tokenizers.Tokenizer`` (read-only use)."""
        return self._tk

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tk.id_to_token(token_id)

    @property
    def is_byte_level(self) -> bool:
        """True when every id has a fixed byte string (byte-level BPE), so ``token_bytes`` is defined."""
        return self._byte_level

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes ``token_id`` contributes to decoded text (byte-level tokenizers only).

        A token may hold part of a character; concatenating the bytes of a sequence and decoding them equals
        ``decode``. Ids outside the tokenizer give ``b""``. The table is built on first use (~0.3 s for Qwen).
        """
        if not self._byte_level:
            raise TypeError(f"tokenizer {self.name!r} is not byte-level; token_bytes is undefined")
        table = self._bytes_table
        if table is None:
            table = self._bytes_table = self._build_bytes_table()
        return table[token_id] if 0 <= token_id < len(table) else b""

    def _build_bytes_table(self) -> list[bytes]:
        inverse = {c: b for b, c in enumerate(bytes_to_unicode())}
        table = [b""] * self._vocab_size
        for text, i in self._tk.get_vocab(with_added_tokens=False).items():
            if 0 <= i < self._vocab_size:
                table[i] = bytes(inverse[c] for c in text if c in inverse)
        for i, tok in self._tk.get_added_tokens_decoder().items():
            table[i] = tok.content.encode("utf-8")
        return table

    # ---- text ↔ ids ----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token text such as ``<|im_start|>`` maps to its id. No BOS."""
        return self._tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``. Ids past the tokenizer (the model's padded vocabulary rows) decode to nothing."""
        ids = [int(i) for i in ids]
        if any(i < 0 or i >= self._vocab_size for i in ids):
            ids = [i for i in ids if 0 <= i < self._vocab_size]
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    # ---- chat ----------------------------------------------------------------------------------------------
    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool = True,
        preserve_thinking: bool = False,
        **kwargs: Any,
    ) -> str:
        """Render the conversation into the prompt text with the checkpoint's template.

        Tool-call ``arguments`` given as JSON strings (OpenAI style) are parsed into objects first; a string
        that is not a JSON object is a ``ChatTemplateError``. Other ``kwargs`` become template variables.
        """
        if self.chat_template is None:
            raise ChatTemplateError(f"tokenizer {self.name!r} has no chat template")
        return render_chat_template(
            self.chat_template,
            messages,
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            **{
                **self.special_tokens_map,
                "enable_thinking": enable_thinking,
                "preserve_thinking": preserve_thinking,
                **kwargs,
            },
        )

    def render_chat_ids(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        enable_thinking: bool = True,
        preserve_thinking: bool = False,
        **kwargs: Any,
    ) -> list[int]:
        """``encode(apply_chat_template(...))``: prompt ids (each image still one ``<|image_pad|>``)."""
        return self.encode(
            self.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                enable_thinking=enable_thinking,
                preserve_thinking=preserve_thinking,
                **kwargs,
            )
        )

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, eos={sorted(self.eos_token_ids)})"
