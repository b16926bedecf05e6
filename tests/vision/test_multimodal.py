"""Multimodal glue vs HF: mRoPE index, image-token expansion, splicing, image+text logits, greedy generation
after an image and a multi-turn continuation with the cache."""

from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

from cortex_jax.engine.api import ImageInput
from cortex_jax.engine.steps import decode_positions
from cortex_jax.image import preprocess_image
from models.qwen36.multimodal import expand_image_tokens, prompt_embeds, rope_index, splice_image_features
from tests.vision.conftest import IMG, VE, VS, T, assert_close_rel

MIN_PIX, MAX_PIX = 32 * 32, 128 * 128


def _png(w, h, seed):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def images():
    # 64x96 → grid (1, 4, 6) → 6 tokens; 100x60 → (1, 4, 6)? no: 96x64 px → (1, 6, 4)... keep both aspects
    return [preprocess_image(_png(96, 64, 1), min_pixels=MIN_PIX, max_pixels=MAX_PIX),
            preprocess_image(_png(64, 128, 2), min_pixels=MIN_PIX, max_pixels=MAX_PIX)]


def _prompt(n_images: int, seed=0) -> list[int]:
    rng = np.random.default_rng(seed)
    text = lambda n: rng.integers(0, 990, n).tolist()  # noqa: E731
    ids = text(5)
    for _ in range(n_images):
        ids += [VS, IMG, VE] + text(4)
    return ids


def _hf_inputs(ids, images):
    ids_t = torch.tensor([ids])
    kw = dict(input_ids=ids_t, mm_token_type_ids=(ids_t == IMG).long())
    if images:
        kw["pixel_values"] = torch.tensor(np.concatenate([im.pixel_values for im in images]))
        kw["image_grid_thw"] = torch.tensor([im.grid_thw for im in images])
    return kw


@pytest.mark.parametrize("n_images", [0, 1, 2])
def test_rope_index_matches_hf(vlm, images, n_images):
    ims = images[:n_images]
    ids = expand_image_tokens(_prompt(n_images), ims, IMG)
    kw = _hf_inputs(ids, ims)
    ref_pos, ref_delta = vlm.hf.model.get_rope_index(
        kw["input_ids"], kw["mm_token_type_ids"], image_grid_thw=kw.get("image_grid_thw"))
    pos, delta = rope_index(ids, [im.grid_thw for im in ims], vlm.cfg)
    np.testing.assert_array_equal(pos, ref_pos[:, 0].numpy())
    assert delta == int(ref_delta[0, 0])


def test_rope_index_reference_example(vlm):
    """Reference §5's checked example: [a b c <vs> 6×img <ve> d e f], grid (1, 4, 6)."""
    ids = [1, 2, 3, VS] + [IMG] * 6 + [VE, 4, 5, 6]
    pos, delta = rope_index(ids, [(1, 4, 6)], vlm.cfg)
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 7, 8, 9, 10]
    assert pos[1].tolist()[4:10] == [4, 4, 4, 5, 5, 5] and pos[2].tolist()[4:10] == [4, 5, 6, 4, 5, 6]
    assert delta == -3
    # a continuation with a new image starts at past_len + past_delta and yields a consistent delta
    more, d2 = rope_index([7, VS] + [IMG] * 6 + [VE], [(1, 4, 6)], vlm.cfg, past_len=14, past_delta=delta)
    full, d_full = rope_index(ids + [7, VS] + [IMG] * 6 + [VE], [(1, 4, 6)] * 2, vlm.cfg)
    np.testing.assert_array_equal(more, full[:, 14:])
    assert d2 == d_full


def test_expand_and_errors(vlm, images):
    ids = expand_image_tokens([5, VS, IMG, VE], images[:1], IMG)
    assert ids.count(IMG) == images[0].num_tokens == 6
    with pytest.raises(ValueError, match="2 images"):
        expand_image_tokens([IMG], images, IMG)
    with pytest.raises(ValueError, match="does not match grid"):
        rope_index([IMG] * 5, [(1, 4, 6)], vlm.cfg)
    with pytest.raises(ValueError, match="video"):
        rope_index([1001], [], vlm.cfg)


def test_splice_image_features():
    emb = jnp.zeros((2, 4, 3))
    mask = jnp.array([[0, 1, 1, 0], [1, 0, 0, 0]], bool)
    feats = jnp.arange(12.0).reshape(4, 3)  # 3 real rows + 1 padding row
    out = np.asarray(splice_image_features(emb, feats, mask))
    np.testing.assert_array_equal(out[0, 1:3], feats[:2])
    np.testing.assert_array_equal(out[1, 0], feats[2])
    assert out[0, 0].sum() == out[0, 3].sum() == out[1, 1:].sum() == 0


# ---- whole model -------------------------------------------------------------------------------------------
def _prefill(vlm, ids, images):
    ids_np, embeds, pos, delta = prompt_embeds(vlm.vision_step, vlm.embed_step, vlm.state, ids, images,
                                               vlm.cfg)
    n = len(ids_np)
    tok = np.zeros((1, T), np.int32)
    tok[0, :n] = ids_np
    p = np.zeros((3, 1, T), np.int32)
    p[:, 0, :n] = pos
    valid = np.arange(T)[None] < n
    emb = jnp.zeros((1, T, embeds.shape[-1])).at[0, :n].set(embeds)
    logits, cache = vlm.prefill(vlm.state, vlm.cache(), tok, p, valid, emb)
    return ids_np.tolist(), logits[0], cache, delta


def _hf_last_logits(vlm, ids, images):
    with torch.no_grad():
        return vlm.hf(**_hf_inputs(ids, images)).logits[0, -1].numpy()


def test_image_text_logits_match_hf(vlm, images):
    ids = _prompt(2, seed=1)
    full, logits, _, _ = _prefill(vlm, ids, images)
    assert_close_rel(logits, _hf_last_logits(vlm, full, images), 1e-4, "image+text logits")


def _decode(vlm, cache, delta, first, n):
    out = [int(first)]
    for _ in range(n - 1):
        logits, cache = vlm.decode(vlm.state, cache, jnp.array([out[-1]], jnp.int32),
                                   decode_positions(cache.lengths, jnp.array([delta])))
        out.append(int(jnp.argmax(logits[0])))
    return out, cache


def test_greedy_generation_and_multiturn_match_hf(vlm, images):
    ids = _prompt(1, seed=2)
    full, logits, cache, delta = _prefill(vlm, ids, images[:1])
    ours, cache = _decode(vlm, cache, delta, jnp.argmax(logits), 6)
    with torch.no_grad():
        ref = vlm.hf.generate(**_hf_inputs(full, images[:1]), max_new_tokens=6, do_sample=False)
    assert ours == ref[0, len(full):].tolist()

    # second user turn (text only) continues from the cache: the last generated token has not been fed yet,
    # so it leads the chunk; positions are text positions + rope_delta
    turn2 = [ours[-1], 7, 8, 9, 10, 11]
    n_past = int(cache.lengths[0])
    t2 = len(turn2)
    tok = np.zeros((1, T), np.int32)
    tok[0, :t2] = turn2
    pos = np.zeros((3, 1, T), np.int32)
    pos[:, 0, :t2] = np.arange(n_past, n_past + t2) + delta
    logits2, cache = vlm.prefill(vlm.state, cache, tok, pos, np.arange(T)[None] < t2)
    history = full + ours + turn2[1:]
    assert_close_rel(logits2[0], _hf_last_logits(vlm, history, images[:1]), 1e-4, "turn-2 logits with cache")
    more, _ = _decode(vlm, cache, delta, jnp.argmax(logits2[0]), 4)
    with torch.no_grad():
        ref2 = vlm.hf.generate(**_hf_inputs(history, images[:1]), max_new_tokens=4, do_sample=False)
    assert more == ref2[0, len(history):].tolist()


def test_text_only_prompt_through_multimodal_path(vlm):
    ids = _prompt(0, seed=3)
    _, logits, _, delta = _prefill(vlm, ids, [])
    assert delta == 0
    assert_close_rel(logits, _hf_last_logits(vlm, ids, []), 1e-4, "text-only logits")


def test_image_input_is_engine_type(images):
    assert isinstance(images[0], ImageInput) and images[0].grid_thw == (1, 4, 6)
