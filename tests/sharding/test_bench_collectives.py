"""``scripts/bench_collectives.py --small`` on 4 fake CPU devices: every chain compiles to exactly K all-reduces
(none folded or combined) and is timed, and an ``--xla-variants`` run reports a child that dies on an unknown
XLA flag as a failed variant instead of crashing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.sharding.conftest import ROOT, device_env

SCRIPT = ROOT / "scripts" / "bench_collectives.py"


def test_chains_and_a_failing_variant(tmp_path):
    out = tmp_path / "bc"
    cmd = [sys.executable, str(SCRIPT), "--small", "--devices", "4", "--tps", "2,4,8", "--k", "6",
           "--out", str(out), "--xla-variants", "default;--xla_no_such_flag_for_the_test=1"]
    proc = subprocess.run(cmd, env=device_env(4), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    ok, bad = res["variants"]
    assert ok["rc"] == 0 and ok["env"]["devices"] == 4 and ok["env"]["backend"] == "cpu"
    rows = {(r["mode"], r["tp"], r["batch"]): r for r in ok["rows"]}
    assert set(rows) == {(m, tp, b) for m in ("psum", "psum_mm", "gspmd", "gspmd_mm") for tp in (2, 4)
                         for b in (1, 4)} | {(m, 1, b) for m in ("kernels", "mm") for b in (1, 4)}  # no tp 8
    for (_, tp, _), r in rows.items():
        assert "error" not in r and "warning" not in r, r
        assert r["all_reduces"] == (0 if tp == 1 else 6), r
        assert r["us_per_link"] > 0 and r["ms_per_call"] > 0
        if tp > 1:
            assert "net_us" in r
    assert bad["rc"] != 0 and "Unknown flag" in bad["error"] and "rows" not in bad
    assert bad["unknown_flags"] == ["--xla_no_such_flag_for_the_test=1"]
    tail = proc.stdout.strip().splitlines()
    assert tail[-1].startswith("* `--xla_no_such_flag_for_the_test=1` failed")
    assert any(line.startswith("| psum | 4 | 1 | ") for line in tail)
