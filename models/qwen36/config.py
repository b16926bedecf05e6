"""Frozen Qwen3.6 (HF ``model_type: qwen3_5``) configuration, parsed once from ``config.json``.

Everything downstream reads these dataclasses; nothing mutates them. Tests derive variants with
``dataclasses.replace``. Field names follow the HF config; derived sizes are properties.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")


class ConfigError(ValueError):
    """A config.json that cannot describe a Qwen3.6 model; the message names the field."""


class LayerKind(enum.Enum):
    LINEAR = "linear_attention"  # Gated DeltaNet
    FULL = "full_attention"  # gated softmax attention


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_kinds: tuple[LayerKind, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.25
    mrope_section: tuple[int, int, int] = (11, 11, 10)
    max_position_embeddings: int = 32768
    attention_bias: bool = False
    hidden_act: str = "silu"
    eos_token_ids: tuple[int, ...] = ()
    mtp_num_hidden_layers: int = 0

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def key_dim(self) -> int:  # Hk·dk
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def value_dim(self) -> int:  # Hv·dv
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:  # channels of in_proj_qkv / conv1d: [q | k | v]
        return 2 * self.key_dim + self.value_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def full_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.layer_kinds) if k is LayerKind.FULL)

    @property
    def linear_attention_layers(self) -> tuple[int, ...]:
        return tuple(i for i, k in enumerate(self.layer_kinds) if k is LayerKind.LINEAR)


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 27
    hidden_size: int = 1152
    num_heads: int = 16
    intermediate_size: int = 4304
    hidden_act: str = "gelu_pytorch_tanh"
    in_channels: int = 3
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    num_position_embeddings: int = 2304
    out_hidden_size: int = 3584
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:  # flattened (C, T, kh, kw) patch vector
        return self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size


@dataclass(frozen=True)
class Qwen36Config:
    text: TextConfig
    vision: VisionConfig | None
    tie_word_embeddings: bool = False
    image_token_id: int = 248056
    video_token_id: int = 248057
    vision_start_token_id: int = 248053
    vision_end_token_id: int = 248054
    model_type: str = "qwen3_5"

    # ---- parsing -------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> Qwen36Config:
        """Translate an HF ``config.json`` dict (VLM with nested text/vision, or text-only)."""
        model_type = d.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"config.json: unsupported model_type {model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}"
            )
        if model_type == "qwen3_5":
            if "text_config" not in d:
                raise ConfigError("config.json: missing field 'text_config' for model_type 'qwen3_5'")
            text_d = d["text_config"]
            vision_d = d.get("vision_config")
            tie = bool(d.get("tie_word_embeddings", False))
        else:
            text_d, vision_d = d, None
            tie = bool(d.get("tie_word_embeddings", False))
        text = _parse_text(text_d, top=d)
        vision = _parse_vision(vision_d) if vision_d is not None else None
        if vision is not None and vision.out_hidden_size != text.hidden_size:
            raise ConfigError(
                f"config.json: vision_config.out_hidden_size {vision.out_hidden_size} must equal "
                f"text_config.hidden_size {text.hidden_size}"
            )
        return cls(
            text=text,
            vision=vision,
            tie_word_embeddings=tie,
            image_token_id=int(d.get("image_token_id", 248056)),
            video_token_id=int(d.get("video_token_id", 248057)),
            vision_start_token_id=int(d.get("vision_start_token_id", 248053)),
            vision_end_token_id=int(d.get("vision_end_token_id", 248054)),
            model_type=model_type,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Qwen36Config:
        f = Path(path) / "config.json"
        if not f.is_file():
            raise ConfigError(f"{f}: missing config.json")
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{f}: not valid JSON ({e})") from e
        return cls.from_hf(d)

    def replace_text(self, **changes: Any) -> Qwen36Config:
        return dataclasses.replace(self, text=dataclasses.replace(self.text, **changes))


def _require(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"config.json: missing field '{where}{key}'")
    return d[key]


def _parse_text(d: Mapping[str, Any], top: Mapping[str, Any]) -> TextConfig:
    where = "text_config." if "text_config" in top else ""
    n_layers = int(_require(d, "num_hidden_layers", where))
    if d.get("layer_types") is not None:
        try:
            kinds = tuple(LayerKind(t) for t in d["layer_types"])
        except ValueError as e:
            raise ConfigError(f"config.json: {where}layer_types: {e}") from e
        if len(kinds) != n_layers:
            raise ConfigError(
                f"config.json: {where}layer_types has {len(kinds)} entries, num_hidden_layers is {n_layers}"
            )
    else:
        interval = int(d.get("full_attention_interval", 4))
        kinds = tuple(LayerKind.FULL if (i + 1) % interval == 0 else LayerKind.LINEAR for i in range(n_layers))

    rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"config.json: {where}rope_parameters.rope_type {rope_type!r} is not supported")
    theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
    partial = float(rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.25)))
    section = tuple(int(x) for x in rope.get("mrope_section", (11, 11, 10)))
    if len(section) != 3:
        raise ConfigError(f"config.json: {where}rope_parameters.mrope_section must have 3 entries")

    head_dim = int(d.get("head_dim") or _require(d, "hidden_size", where) // _require(d, "num_attention_heads", where))
    eos = d.get("eos_token_id", top.get("eos_token_id"))
    eos_ids = tuple(eos) if isinstance(eos, list | tuple) else (() if eos is None else (int(eos),))
    return TextConfig(
        vocab_size=int(_require(d, "vocab_size", where)),
        hidden_size=int(_require(d, "hidden_size", where)),
        intermediate_size=int(_require(d, "intermediate_size", where)),
        num_hidden_layers=n_layers,
        layer_kinds=kinds,
        num_attention_heads=int(_require(d, "num_attention_heads", where)),
        num_key_value_heads=int(_require(d, "num_key_value_heads", where)),
        head_dim=head_dim,
        linear_num_key_heads=int(_require(d, "linear_num_key_heads", where)),
        linear_num_value_heads=int(_require(d, "linear_num_value_heads", where)),
        linear_key_head_dim=int(_require(d, "linear_key_head_dim", where)),
        linear_value_head_dim=int(_require(d, "linear_value_head_dim", where)),
        linear_conv_kernel_dim=int(d.get("linear_conv_kernel_dim", 4)),
        rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        partial_rotary_factor=partial,
        mrope_section=section,  # type: ignore[arg-type]
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        attention_bias=bool(d.get("attention_bias", False)),
        hidden_act=str(d.get("hidden_act", "silu")),
        eos_token_ids=tuple(int(x) for x in eos_ids),
        mtp_num_hidden_layers=int(d.get("mtp_num_hidden_layers", 0) or 0),
    )


def _parse_vision(d: Mapping[str, Any]) -> VisionConfig:
    fields = {f.name for f in dataclasses.fields(VisionConfig)}
    kw = {k: d[k] for k in fields if k in d and d[k] is not None}
    rope = d.get("rope_parameters") or {}
    if "rope_theta" in rope:
        kw["rope_theta"] = float(rope["rope_theta"])
    return VisionConfig(**kw)
