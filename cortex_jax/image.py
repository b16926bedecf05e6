"""Image preprocessing for Qwen-VL style vision towers: bytes → patches in merge-block order.

Pipeline (reference §7; equal to transformers 5.23 ``Qwen2VLImageProcessorPil``, which is what
``Qwen2VLImageProcessor`` / ``AutoImageProcessor`` fall back to without torchvision — which is absent here):

1. decode with pillow (PNG, JPEG, WebP, GIF first frame, BMP only), apply the EXIF orientation (as HF's
   ``load_image`` does for files), convert to RGB compositing any alpha onto white (HF ``convert_to_rgb``);
2. ``smart_resize`` to (h̄, w̄), multiples of ``factor = patch·merge`` (32) within [min_pixels, max_pixels];
3. PIL bicubic resize (``Image.BICUBIC`` on the uint8 RGB image, exactly HF's PIL backend; torchvision's
   antialiased tensor bicubic differs by a few 1/255 steps);
4. ``x = float32(float64(u8) · rescale)``, then ``(x − mean) / std`` in float32 (HF's order and dtypes);
5. patchify: the frame is repeated to T = 2 and each patch flattened as (C, T, p, p); patches ordered by 2×2
   merge blocks in raster order, inside a block (0,0),(0,1),(1,0),(1,1). grid = (1, h̄/p, w̄/p);
   ``<|image_pad|>`` tokens = h̄·w̄ / (p·merge)².

Shape letters: N patches, P = C·T·p·p patch vector (1536 for Qwen3.6).

Every rejection raises :class:`ImageError` (a ``ValueError``) with a message fit for an HTTP 400 body.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cortex_jax.engine.api import ImageInput

SUPPORTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_ASPECT_RATIO = 200
# Containers people send by mistake as "images": recognised only to say clearly that video is unsupported.
_VIDEO_MAGIC = ((4, b"ftyp"), (0, b"\x1aE\xdf\xa3"), (0, b"OggS"), (8, b"AVI "))


class ImageError(ValueError):
    """A bad or unsupported image input (maps to HTTP 400); the message says what and why."""


@dataclass(frozen=True)
class ImageProcessorConfig:
    """The checkpoint's ``preprocessor_config.json`` fields that matter (defaults: Qwen3.5/3.6 published)."""

    min_pixels: int = 65536  # size.shortest_edge (256²)
    max_pixels: int = 16777216  # size.longest_edge (4096²)
    patch_size: int = 16
    temporal_patch_size: int = 2
    merge_size: int = 2
    rescale_factor: float = 1 / 255
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_hf(cls, d: Mapping[str, Any]) -> ImageProcessorConfig:
        size = d.get("size") or {}
        kw: dict[str, Any] = {}
        for ours, keys in (("min_pixels", ("min_pixels",)), ("max_pixels", ("max_pixels",))):
            for k in keys:
                if d.get(k) is not None:
                    kw[ours] = int(d[k])
        if size.get("shortest_edge") is not None:
            kw["min_pixels"] = int(size["shortest_edge"])
        if size.get("longest_edge") is not None:
            kw["max_pixels"] = int(size["longest_edge"])
        for k in ("patch_size", "temporal_patch_size", "merge_size"):
            if d.get(k) is not None:
                kw[k] = int(d[k])
        if d.get("rescale_factor") is not None:
            kw["rescale_factor"] = float(d["rescale_factor"])
        for k in ("image_mean", "image_std"):
            if d.get(k) is not None:
                kw[k] = tuple(float(x) for x in d[k])
        return cls(**kw)

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size


@dataclass(frozen=True)
class ImageLimits:
    """Operator-configurable caps; everything above them is a 400, never an OOM or a hang."""

    max_bytes: int = 32 << 20  # encoded size
    max_decoded_pixels: int = 64_000_000  # W·H from the header, checked *before* decoding (bombs)
    max_image_tokens: int | None = None  # per image, after resize (None: whatever max_pixels allows)
    max_images: int = 16  # per request
    max_total_image_tokens: int | None = None  # per request


@dataclass(frozen=True)
class FetchPolicy:
    """Which remote image URLs the server may fetch. Default: none (remote URLs are refused with a 400).

    The neuron owns fetching; this object only decides. ``allowed_hosts`` are exact lower-case host names;
    ``allow_http`` also lets plain ``http`` through for them (e.g. an internal image store), else https only.
    """

    allowed_hosts: frozenset[str] = field(default_factory=frozenset)
    allow_http: bool = False

    def refusal(self, url: str) -> str | None:
        """Why ``url`` may not be fetched (a 400 message), or None when it may."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts:
            return (f"remote image URLs are not allowed on this server (host {host or '?'!r}); send the image "
                    "inline as a base64 data: URI")
        if parts.scheme.lower() == "https" or (self.allow_http and parts.scheme.lower() == "http"):
            return None
        scheme = parts.scheme or "(no scheme)"
        return f"{scheme} image URLs are not allowed (host {host!r} is allow-listed for https only)"

    def allows(self, url: str) -> bool:
        return self.refusal(url) is None


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(h̄, w̄): multiples of ``factor`` near (height, width) with min_pixels ≤ h̄·w̄ ≤ max_pixels (HF semantics,
    incl. Python's banker's ``round``)."""
    if min(height, width) <= 0:
        raise ImageError(f"image has zero size ({width}x{height})")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ImageError(
            f"image aspect ratio {max(height, width) / min(height, width):.1f} exceeds {MAX_ASPECT_RATIO} "
            f"({width}x{height})"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def num_image_tokens(height: int, width: int, cfg: ImageProcessorConfig) -> int:
    """``<|image_pad|>`` count for an image of this original size (no decoding needed)."""
    h_bar, w_bar = smart_resize(height, width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return (h_bar // cfg.patch_size) * (w_bar // cfg.patch_size) // cfg.merge_size**2


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a ``data:image/...;base64,...`` URI; video MIME types, non-base64 and malformed URIs are
    refused."""
    if not uri.startswith("data:"):
        raise ImageError("expected a data: URI")
    header, sep, payload = uri[5:].partition(",")
    if not sep:
        raise ImageError("malformed data URI: missing ','")
    params = header.split(";")
    mime = params[0].strip().lower()
    if mime.startswith("video/"):
        raise ImageError(f"video inputs are not supported ({mime})")
    if mime and not mime.startswith("image/"):
        raise ImageError(f"data URI has MIME type {mime!r}; expected image/*")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ImageError("data URI must be base64-encoded (';base64,')")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ImageError(f"data URI is not valid base64: {e}") from e


def load_image_url(url: str, policy: FetchPolicy | None = None) -> bytes:
    """Bytes of an image given as an OpenAI/Anthropic URL string: a data URI, or a remote URL the policy
    allows.

    Remote URLs are refused unless ``policy`` allow-lists the host; even then this module does not fetch —
    the caller (neuron) does, with its own client, timeouts and ``max_bytes``.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "data":
        return decode_data_uri(url)
    if scheme in ("http", "https"):
        refusal = (policy or FetchPolicy()).refusal(url)
        if refusal:
            raise ImageError(refusal)
        host = urlsplit(url).hostname or "?"
        raise ImageError(f"remote image fetching is not implemented here; the caller must fetch {host!r}")
    raise ImageError(f"unsupported image URL scheme {scheme or '(none)'!r}; send a base64 data: URI")


def decode_image(data: bytes, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Decode to an RGB pillow image (first frame of animations, EXIF orientation applied)."""
    if not data:
        raise ImageError("image data is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes; the limit is {limits.max_bytes}")
    if any(data[off : off + len(magic)] == magic for off, magic in _VIDEO_MAGIC):
        raise ImageError("video inputs are not supported; send a still image (PNG, JPEG, WebP, GIF, BMP)")
    try:
        img = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(_unidentified(data)) from None
    except Image.DecompressionBombError as e:  # pillow's own hard cap (2 × MAX_IMAGE_PIXELS) hit first
        raise ImageError(f"image dimensions are too large (decompression bomb?): {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:  # header parse errors from individual plugins
        raise ImageError(_damaged("", e)) from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(f"image has zero size ({w}x{h})")
    if w * h > limits.max_decoded_pixels:
        raise ImageError(
            f"image is {w}x{h} = {w * h} pixels; the limit is {limits.max_decoded_pixels} "
            "(decompression bomb?)"
        )
    try:
        img.load()  # first frame only for GIF/WebP animations
        img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(_damaged(img.format or "", e)) from e


def _damaged(fmt: str, e: BaseException) -> str:
    kind = "truncated" if "truncated" in str(e).lower() else "corrupt"
    return " ".join(x for x in (kind, fmt, f"image data ({e})") if x)


def _unidentified(data: bytes) -> str:
    try:  # name the format if pillow knows it, so the user sees "TIFF is not supported" rather than "corrupt"
        fmt = Image.open(io.BytesIO(data)).format
    except Exception:  # noqa: BLE001 - any failure here just means "unknown"
        fmt = None
    if fmt:
        return f"unsupported image format {fmt}; supported: {', '.join(SUPPORTED_FORMATS)}"
    return f"cannot decode image data (corrupt, or not one of {', '.join(SUPPORTED_FORMATS)})"


def _to_rgb(img: Image.Image) -> Image.Image:
    """HF ``convert_to_rgb``: composite transparency onto white, then RGB."""
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def patchify(image: np.ndarray, cfg: ImageProcessorConfig) -> np.ndarray:
    """CHW float32 image → ``[N, C·T·p·p]`` patches in merge-block order, each frame repeated T times."""
    c, h, w = image.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = h // p, w // p
    x = image.reshape(c, gh // m, m, p, gw // m, m, p)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (block_row, block_col, in_row, in_col, C, p, p)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
    return np.ascontiguousarray(x).reshape(gh * gw, c * t * p * p)


def preprocess_pil(img: Image.Image, cfg: ImageProcessorConfig,
                   limits: ImageLimits = ImageLimits()) -> ImageInput:
    """RGB pillow image → :class:`ImageInput` (pixel_values ``[N, P]`` float32, grid (1, h̄/p, w̄/p))."""
    w, h = img.size
    h_bar, w_bar = smart_resize(h, w, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    n_tokens = (h_bar // cfg.patch_size) * (w_bar // cfg.patch_size) // cfg.merge_size**2
    if limits.max_image_tokens is not None and n_tokens > limits.max_image_tokens:
        raise ImageError(
            f"image {w}x{h} needs {n_tokens} image tokens after resizing to {w_bar}x{h_bar}; "
            f"the per-image limit is {limits.max_image_tokens}"
        )
    resized = img.resize((w_bar, h_bar), resample=Image.BICUBIC)
    x = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)  # CHW
    x = (x.astype(np.float64) * cfg.rescale_factor).astype(np.float32)  # HF: upcast, scale, downcast
    mean = np.asarray(cfg.image_mean, np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, np.float32)[:, None, None]
    x = (x - mean) / std
    grid = (1, h_bar // cfg.patch_size, w_bar // cfg.patch_size)
    return ImageInput(pixel_values=patchify(x, cfg), grid_thw=grid)


def preprocess_image(
    data: bytes,
    *,
    min_pixels: int,
    max_pixels: int,
    max_image_tokens: int | None = None,
    cfg: ImageProcessorConfig | None = None,
    limits: ImageLimits | None = None,
) -> ImageInput:
    """Encoded bytes → :class:`ImageInput`. ``min_pixels``/``max_pixels`` come from the checkpoint's
    preprocessor_config.json (``size.shortest_edge``/``longest_edge``); they override ``cfg``'s."""
    cfg = ImageProcessorConfig(**{**(cfg or ImageProcessorConfig()).__dict__,
                                  "min_pixels": min_pixels, "max_pixels": max_pixels})
    limits = limits or ImageLimits()
    if max_image_tokens is not None:
        limits = ImageLimits(**{**limits.__dict__, "max_image_tokens": max_image_tokens})
    return preprocess_pil(decode_image(data, limits), cfg, limits)


def check_request_images(images: Sequence[ImageInput], limits: ImageLimits) -> None:
    """Per-request caps: number of images and total image tokens."""
    if len(images) > limits.max_images:
        raise ImageError(f"{len(images)} images in one request; the limit is {limits.max_images}")
    total = sum(im.num_tokens for im in images)
    if limits.max_total_image_tokens is not None and total > limits.max_total_image_tokens:
        raise ImageError(
            f"images need {total} image tokens in total; "
            f"the per-request limit is {limits.max_total_image_tokens}"
        )


def check_image_count(n_images: int, limits: ImageLimits) -> None:
    """Cheap pre-check before decoding anything."""
    if n_images > limits.max_images:
        raise ImageError(f"{n_images} images in one request; the limit is {limits.max_images}")
