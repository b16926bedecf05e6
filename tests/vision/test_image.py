"""Image preprocessing: parity with transformers' Qwen2VL image processor (PIL backend); every bad input."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from cortex_jax.image import (
    FetchPolicy,
    ImageError,
    ImageLimits,
    ImageProcessorConfig,
    check_request_images,
    decode_data_uri,
    load_image_url,
    num_image_tokens,
    preprocess_image,
    smart_resize,
)

MIN_PIX, MAX_PIX = 64 * 64, 160 * 160  # small max so the downscale case stays cheap


def _image(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    """A gradient plus noise: every resize and channel mix shows up in the pixels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) * 127 / max(w + h, 1)], -1)
    arr = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, "RGB")
    if mode == "RGBA":
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def hf_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    # Qwen3.5/3.6 published preprocessor_config.json, with a small pixel budget.
    return Qwen2VLImageProcessorPil(
        size={"shortest_edge": MIN_PIX, "longest_edge": MAX_PIX}, patch_size=16, temporal_patch_size=2,
        merge_size=2, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )


def test_hf_default_backend_is_pil_without_torchvision():
    """We match the PIL backend because that is what HF picks here (torchvision is not installed)."""
    import transformers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = transformers.Qwen2VLImageProcessor
    assert cls.__name__ == "Qwen2VLImageProcessorPil"


CASES = [
    ("PNG", 100, 70, "RGB"),  # plain, rounds to 96x64
    ("JPEG", 37, 29, "RGB"),  # tiny: min-pixels upscaling
    ("PNG", 400, 250, "RGB"),  # large: max-pixels downscaling
    ("WEBP", 90, 150, "RGB"),  # portrait, lossy WebP
    ("GIF", 80, 64, "P"),  # palette
    ("BMP", 130, 48, "RGB"),  # wide
    ("PNG", 72, 72, "RGBA"),  # alpha composited onto white
    ("PNG", 50, 90, "L"),  # greyscale
]


@pytest.mark.parametrize("fmt,w,h,mode", CASES)
def test_pixel_values_match_hf(hf_processor, fmt, w, h, mode):
    data = _encode(_image(w, h, mode, seed=w), fmt)
    ours = preprocess_image(data, min_pixels=MIN_PIX, max_pixels=MAX_PIX)
    ref = hf_processor(images=[Image.open(io.BytesIO(data))], return_tensors="np")
    assert ours.grid_thw == tuple(int(x) for x in ref["image_grid_thw"][0])
    assert ours.pixel_values.dtype == np.float32
    np.testing.assert_array_equal(ours.pixel_values, ref["pixel_values"])
    assert ours.num_tokens == ours.pixel_values.shape[0] // 4 == num_image_tokens(h, w, _cfg())


def _cfg():
    return ImageProcessorConfig(min_pixels=MIN_PIX, max_pixels=MAX_PIX)


def test_resize_regimes():
    assert smart_resize(29, 37, 32, MIN_PIX, MAX_PIX) == (64, 96)  # upscaled to ≥ min_pixels
    h, w = smart_resize(250, 400, 32, MIN_PIX, MAX_PIX)
    assert h * w <= MAX_PIX and (h, w) == (96, 192)
    assert smart_resize(48, 80, 32, 0, 10**9) == (64, 64)  # banker's rounding: round(1.5) = round(2.5) = 2
    # published 27B limits: 448² stays 448², 1024² stays, 2048² stays (< 4096²)
    pub = ImageProcessorConfig()
    assert num_image_tokens(448, 448, pub) == 196 and num_image_tokens(2048, 2048, pub) == 4096


def test_gif_uses_first_frame(hf_processor):
    frames = [_image(64, 64, seed=s) for s in (1, 2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    ours = preprocess_image(buf.getvalue(), min_pixels=MIN_PIX, max_pixels=MAX_PIX)
    ref = hf_processor(images=[Image.open(io.BytesIO(buf.getvalue()))], return_tensors="np")
    np.testing.assert_array_equal(ours.pixel_values, ref["pixel_values"])


def test_data_uri_roundtrip():
    data = _encode(_image(40, 40), "PNG")
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert decode_data_uri(uri) == data
    assert load_image_url(uri) == data


# ---- bad input ---------------------------------------------------------------------------------------------
def _err(data: bytes, **kw) -> str:
    with pytest.raises(ImageError) as e:
        preprocess_image(data, min_pixels=MIN_PIX, max_pixels=MAX_PIX, **kw)
    return str(e.value)


def test_empty():
    assert "empty" in _err(b"")


def test_corrupt():
    assert "cannot decode" in _err(b"this is not an image at all" * 10)
    png = bytearray(_encode(_image(64, 64), "PNG"))
    png[40:60] = b"\x00" * 20  # damage the IDAT stream
    assert "image" in _err(bytes(png))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated(fmt):
    data = _encode(_image(128, 96), fmt)
    msg = _err(data[: len(data) // 2])
    assert "truncated" in msg or "corrupt" in msg


def test_unsupported_format_named():
    assert "TIFF" in _err(_encode(_image(32, 32), "TIFF"))


def test_video_refused():
    mp4 = b"\x00\x00\x00\x20ftypisom" + b"\x00" * 64
    assert "video" in _err(mp4)
    with pytest.raises(ImageError, match="video"):
        decode_data_uri("data:video/mp4;base64,AAAA")


@pytest.mark.parametrize("side", [9000, 20000])  # ours (64 M px default) and pillow's hard cap (179 M px)
def test_decompression_bomb(side):
    # a huge PNG header with a tiny compressed body: refused from the header, before decoding
    data = _encode(Image.new("1", (side, side)), "PNG")
    assert len(data) < 100_000
    assert "decompression bomb" in _err(data)


def test_too_many_bytes():
    assert "bytes" in _err(_encode(_image(64, 64), "PNG"), limits=ImageLimits(max_bytes=100))


def test_zero_size():
    with pytest.raises(ImageError, match="zero size"):
        smart_resize(0, 10, 32, MIN_PIX, MAX_PIX)


def test_aspect_ratio():
    assert "aspect ratio" in _err(_encode(Image.new("RGB", (402, 2)), "PNG"))


def test_too_many_tokens_per_image():
    msg = _err(_encode(_image(400, 250), "PNG"), max_image_tokens=10)
    assert "image tokens" in msg and "limit is 10" in msg


def test_too_many_images_and_tokens_per_request():
    im = preprocess_image(_encode(_image(64, 64), "PNG"), min_pixels=MIN_PIX, max_pixels=MAX_PIX)
    with pytest.raises(ImageError, match="3 images"):
        check_request_images([im] * 3, ImageLimits(max_images=2))
    with pytest.raises(ImageError, match="per-request limit"):
        check_request_images([im] * 2, ImageLimits(max_total_image_tokens=im.num_tokens + 1))
    check_request_images([im] * 2, ImageLimits(max_images=2, max_total_image_tokens=2 * im.num_tokens))


def test_remote_urls_refused_by_default():
    with pytest.raises(ImageError, match="remote image URLs are not allowed"):
        load_image_url("https://example.com/cat.png")
    with pytest.raises(ImageError, match="not allowed"):
        load_image_url("http://example.com/cat.png", FetchPolicy(frozenset({"example.com"})))  # https only
    assert FetchPolicy(frozenset({"example.com"})).allows("https://example.com/cat.png")
    assert FetchPolicy(frozenset({"example.com"}), allow_http=True).allows("http://example.com/cat.png")
    assert not FetchPolicy(frozenset({"example.com"}), allow_http=True).allows("http://example.org/cat.png")
    with pytest.raises(ImageError, match="scheme"):
        load_image_url("file:///etc/passwd")


@pytest.mark.parametrize("uri,match", [
    ("data:image/png,abc", "base64"),
    ("data:text/plain;base64,AAAA", "MIME"),
    ("data:image/png;base64", "missing ','"),
    ("data:image/png;base64,@@@", "not valid base64"),
])
def test_bad_data_uris(uri, match):
    with pytest.raises(ImageError, match=match):
        decode_data_uri(uri)
