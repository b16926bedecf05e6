"""The neuron serving one model on several meshes: a real ``python -m serving.neuron`` with 8 fake CPU devices.

The checkpoint is a head-count variant of the embedded ``qwen3.6-tiny`` (same tokenizer, chat template, vision
tower and weight recipe; 4 layers, H 4, Hkv 2, GDN Hk 4 / Hv 8), so tp ∈ {1, 2, 4} fit and tp = 3 or 8 do not.
It is loaded at 1×1, 1×4 and 2×2 in turn; greedy and seeded top-k/top-p chat completions must be identical on
every mesh.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.serving.conftest import start_neuron, stop_neuron
from tests.sharding.conftest import device_env

MODEL = "tiny-tp4"
TEXT = {"num_hidden_layers": 4, "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "linear_num_key_heads": 4, "linear_num_value_heads": 8}
SAMPLED = {"temperature": 1.0, "top_k": 12, "top_p": 0.8, "seed": 3, "logprobs": False}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colours."}], "temperature": 0,
        "max_tokens": 8, "logprobs": True, "chat_template_kwargs": {"enable_thinking": False}}


def make_variant(dest: Path) -> Path:
    """The embedded checkpoint's files with the text config above and weights drawn by the same recipe."""
    from models.qwen36 import embedded

    src = embedded.ensure_embedded_checkpoint()
    dest.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, dest / f.name)
    text = {**embedded.TEXT_CONFIG, **TEXT}
    (dest / "config.json").write_text(json.dumps({**embedded.CONFIG, "text_config": text}, indent=1))
    weights = {k: embedded._draw(k, s, i) for k, s, i in embedded.tensor_shapes(text)}
    embedded.write_safetensors_bf16(dest / "model.safetensors", weights)
    return dest


@pytest.fixture(scope="module")
def neuron(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neuron_tp")
    ckpt = make_variant(tmp / MODEL)
    n = start_neuron(tmp, {"embedded": False, "load": [], "context_limit": 256, "prefill_buckets": [64]},
                     {MODEL: str(ckpt)}, env=device_env(8), wait_loaded=())
    try:
        yield n
    finally:
        stop_neuron(n)


def _error(r, status: int, param: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    return err["message"]


def test_meshes_give_identical_output(neuron):
    outs = {}
    with neuron.client(timeout=180) as c:
        for dp, tp in ((1, 1), (1, 4), (2, 2)):
            r = c.post("/models/load", json={"model": MODEL, "tensor_parallel": tp, "data_parallel": dp})
            assert r.status_code == 200, r.text
            assert (r.json()["tensor_parallel"], r.json()["data_parallel"]) == (tp, dp)
            card = neuron.models()[MODEL]
            assert (card["tensor_parallel"], card["data_parallel"]) == (tp, dp)
            assert card["devices"] == list(range(dp * tp))
            if tp == 4:  # a loaded model refuses another mesh until it is unloaded
                _error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": 2}), 409, "tensor_parallel")
            r = c.post("/v1/chat/completions", json=CHAT)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            # seeded sampling with top-k / top-p: the filter thresholds come from all-gathered logits under tp
            r = c.post("/v1/chat/completions", json={**CHAT, **SAMPLED})
            assert r.status_code == 200, r.text
            sampled = r.json()["choices"][0]["message"]["content"]
            outs[(dp, tp)] = (choice["message"], [t["token"] for t in choice["logprobs"]["content"]], sampled)
            assert c.post("/models/unload", json={"model": MODEL}).status_code == 200
    ref = outs[(1, 1)]
    assert len(ref[1]) == CHAT["max_tokens"] or choice["finish_reason"] == "stop"
    for mesh, out in outs.items():
        assert out == ref, f"mesh {mesh} differs from 1x1: {out} vs {ref}"


def test_bad_meshes_are_400(neuron):
    with neuron.client() as c:
        msg = _error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": 8}), 400, "tensor_parallel")
        assert "tensor_parallel=8" in msg and "heads" in msg and "[1, 2, 4]" in msg
        _error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": 3}), 400, "tensor_parallel")
        msg = _error(c.post("/models/load", json={"model": MODEL, "tensor_parallel": 16}), 400, "tensor_parallel")
        assert "8 local device" in msg
        msg = _error(c.post("/models/load", json={"model": MODEL, "data_parallel": 4, "tensor_parallel": 4}), 400,
                     "data_parallel")
        assert "16 devices" in msg
        msg = _error(c.post("/models/load", json={"model": MODEL, "data_parallel": 4}), 400, "data_parallel")
        assert "slot" in msg  # 2 slots do not split over dp = 4
    assert neuron.models()[MODEL]["state"] == "available"  # refused before anything was touched


def test_discovery_lists_fitting_meshes(neuron):
    d = neuron.client().get("/discovery").json()
    assert d["device_count"] == 8 and d["memory_source"].startswith("unknown")
    m = d["models"][MODEL]
    meshes = {(x["dp"], x["tp"]): x for x in m["meshes"]}
    # tp ∈ {1, 2, 4} fit the heads; dp must divide the 2 slots; dp·tp ≤ 8
    assert set(meshes) == {(1, 1), (2, 1), (1, 2), (2, 2), (1, 4), (2, 4)}
    assert all(x["fits"] is None for x in meshes.values())  # CPU: no per-device memory figure
    w1, w4 = meshes[(1, 1)]["per_device_bytes"], meshes[(1, 4)]["per_device_bytes"]
    assert w4["weights_bytes"] < w1["weights_bytes"] / 2 and meshes[(2, 4)]["devices"] == list(range(8))
