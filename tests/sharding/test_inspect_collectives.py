"""``scripts/inspect_collectives.py``: the 27B head counts (H 24, Hkv 4, GDN Hk 16 / Hv 48) with small widths on
dp 2 × tp 4 decode to exactly the Megatron minimum (two bf16 all-reduces of ``[B/dp, 1, D]`` per layer, one for
the embedding lookup), and the parser reads GPU-style async collectives."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

from tests.sharding.conftest import ROOT, device_env

SCRIPT = ROOT / "scripts" / "inspect_collectives.py"


def _module():
    spec = importlib.util.spec_from_file_location("inspect_collectives", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_decode_2x4_is_the_megatron_minimum(tmp_path):
    out = tmp_path / "s.json"
    cmd = [sys.executable, str(SCRIPT), "--mesh", "2x4", "--batch", "4", "--stage", "spmd", "--json", str(out)]
    proc = subprocess.run(cmd, env=device_env(8), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads(out.read_text())
    # after SPMD partitioning (the dtype GSPMD creates, what the GPU runs): bf16, per dp group of 4 devices
    want = {"all-reduce bf16[2,1,256]": 2}
    assert s["per_layer_type"] == {"gdn": want, "attn": want}, s["per_layer_type"]
    assert s["outside_layers"] == {"all-reduce bf16[2,1,256]": 1}, s["outside_layers"]
    assert s["executions_per_step"] == 2 * 4 + 1
    assert {r["groups"] for r in s["collectives"]} == {"{{0,1,2,3},{4,5,6,7}}"}


def test_parser_reads_async_pairs_and_loops():
    mod = _module()
    meta = 'metadata={op_name="jit(decode)/%s"}'
    text = "\n".join([
        "HloModule jit_decode",
        "",
        "%body (p: (s32[], f32[2])) -> (s32[], f32[2]) {",
        "  %ar = f32[2]{0} all-reduce(f32[2]{0} %x), channel_id=3, replica_groups={{0,1}}, to_apply=%add, "
        + meta % "while/body/reduce_sum",
        "}",
        "",
        "ENTRY %main (a: bf16[1,1,64]) -> bf16[1,1,64] {",
        "  %s = bf16[1,1,64]{2,1,0} all-reduce-start(bf16[1,1,64]{2,1,0} %a), channel_id=1, "
        "replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add, "
        + meta % "layer0_linear/gdn_out/dot_general",
        "  %d = bf16[1,1,64]{2,1,0} all-reduce-done(bf16[1,1,64]{2,1,0} %s)",
        "  %g = (bf16[4,64]{1,0}, bf16[4,64]{1,0}) all-gather-start(bf16[1,64]{1,0} %b), channel_id=2, "
        "replica_groups=[1,4]<=[4], dimensions={0}, " + meta % "layer3_full/qkv_proj/dot_general",
        '  %w = (s32[], f32[2]) while(%t), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"32"}}',
        "}",
    ])
    rows = mod.parse(text)
    assert [(r["op"], r["type"], r["layer"], r["kind"], r["per_step"]) for r in rows] == [
        ("all-reduce", "f32[2]", None, "-", 32),
        ("all-reduce-start", "bf16[1,1,64]", 0, "gdn", 1),
        ("all-gather-start", "(bf16[4,64], bf16[4,64])", 3, "attn", 1),
    ]
    assert rows[0]["ctx"] == "while×32"
    assert rows[1]["groups"] == "{{0,1,2,3}}" and rows[2]["groups"] == "[1,4]<=[4]"
    # jax 0.10's mesh-axis form, as GSPMD writes it for the tp all-reduces of a 2x4 mesh
    g = "mesh['axis_0'=1,'axis_1'=1,'axis_2'=4,'axis_3'=2], device_ids=([2,4]T(1,0)) {'axis_2'}"
    assert mod.expand_groups(g) == "{{0,1,2,3},{4,5,6,7}}"


def test_engine_sampling_gathers_once(tmp_path):
    # the serving step (decode + sampling) at tp 4: the top-k/top-p radix selection runs on one all-gathered copy
    # of the vocab-sharded logits, so no collective sits inside its 32-step loops (it was one per step, 64+)
    out = tmp_path / "e.json"
    cmd = [sys.executable, str(SCRIPT), "--mesh", "1x4", "--step", "engine", "--batch", "4", "--layers", "2",
           "--stage", "spmd", "--json", str(out)]
    proc = subprocess.run(cmd, env=device_env(4), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = json.loads(out.read_text())
    assert not [r for r in s["collectives"] if "while" in r.get("ctx", "")], s["collectives"]
    assert s["executions_per_step"] <= 2 * 2 + 8, s["outside_layers"]
