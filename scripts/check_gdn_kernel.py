#!/usr/bin/env python3
"""Check and time the Gated DeltaNet prefill paths: XLA scan vs the Pallas recurrence kernel.

GPU (27B shapes: B=1, H=48, dk=dv=128, chunk 64, bf16 q/k/v, fp32 g/beta/state)::

    PYTHONPATH=. python3 scripts/check_gdn_kernel.py

CPU smoke run (tiny shapes, Pallas interpreter)::

    PYTHONPATH=. python3 scripts/check_gdn_kernel.py --small

Phases (everything printed as it happens, a summary table at the end):
  1. probe: every Pallas config (block_v × num_warps × num_stages × dot precision) is compiled and run once on a
     short sequence in a child process, so a lowering error, a Triton crash or a hang is reported, not fatal
     (a crash loses only that config: a new child continues with the rest);
  2. accuracy at T=2048: the XLA path with each solve method and the default Pallas config vs a float64 numpy
     recurrence (heads 0-7) and vs the fp32 XLA recurrence (all heads, HIGHEST matmul precision);
  3. kernel-only timing of every working config at T=8192 (the recurrence kernel on precomputed inputs), and
     the intra-chunk prologue per solve method (blocked | merge | inverse | trsm);
  4. end to end ``chunked_gated_delta`` (jit, median of --reps, block_until_ready) at each --lengths for
     xla/trsm (the old code), xla/blocked, pallas/default and the fastest accurate configs, with max |Δ| of
     outputs and final state vs xla/trsm.

``--prologue`` runs only the fused-prologue check instead (``gated_delta_prologue.gdn_chunk_prologue``, selected
in ``chunked_gated_delta`` by CORTEX_GDN_PROLOGUE=pallas)::

    PYTHONPATH=. python3 scripts/check_gdn_kernel.py --prologue            # GPU, 27B shapes
    PYTHONPATH=. python3 scripts/check_gdn_kernel.py --prologue --small    # CPU smoke run

  P1. kernel only at T=--kernel-len (8192): the XLA prologue (``_intra_chunk``, blocked solve, default matmul
      precision as in production) vs the Pallas kernel for a few configs (warps × diagonal block × precision),
      max |Δ| of γ/U/W/A vs the XLA prologue at HIGHEST; also both including the shared ``_prepare`` (l2norm,
      head-major swap, padding: the "prologue 2.0 ms" of docs/kernels.md);
  P2. accuracy at T=--acc-len (2048) vs the float64 loop: the pallas path with either prologue;
  P3. end to end ``chunked_gated_delta`` (impl=pallas) with CORTEX_GDN_PROLOGUE=xla vs pallas at --lengths
      (default 8192), and a final ``PROLOGUE RESULT`` line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

HEADS_REF = 8  # heads checked against the float64 numpy loop (it is slow)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="CPU smoke run: tiny shapes, Pallas interpreter")
    p.add_argument("--lengths", type=str, default=None, help="comma-separated T for end-to-end timing")
    p.add_argument("--acc-len", type=int, default=None, help="T of the accuracy phase (default 2048)")
    p.add_argument("--kernel-len", type=int, default=None, help="T of the kernel-only timing (default 8192)")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (median)")
    p.add_argument("--no-probe", action="store_true", help="skip the subprocess probe of the configs")
    p.add_argument("--quick", action="store_true", help="4 kernel configs instead of 11")
    p.add_argument("--prologue", action="store_true", help="only check/time the fused Pallas prologue (P1-P3)")
    p.add_argument("--probe", type=str, default=None, help=argparse.SUPPRESS)  # internal: configs as JSON
    return p.parse_args()


def short_error(e: BaseException, limit: int = 1500) -> str:
    text = "".join(traceback.format_exception_only(type(e), e)).strip()
    return text if len(text) <= limit else text[: limit // 2] + "\n  [...]\n" + text[-limit // 2 :]


# --------------------------------------------------------------------------------------------------------------


def setup(small: bool):
    if small:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    return jax


def make_inputs(jax, b, t, h, hk, dk, dv, seed=0, qkv_dtype="bfloat16"):
    """Model-like inputs on device: bf16 q/k/v, g = −A_h·softplus(·) with A_h log-uniform in [0.01, 16]
    (weak to strong decay per head), beta = sigmoid(·), nonzero fp32 initial state."""
    import jax.numpy as jnp

    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    dt = jnp.dtype(qkv_dtype)
    q = jax.random.normal(ks[0], (b, t, hk, dk), jnp.float32).astype(dt)
    k = jax.random.normal(ks[1], (b, t, hk, dk), jnp.float32).astype(dt)
    v = jax.random.normal(ks[2], (b, t, h, dv), jnp.float32).astype(dt)
    a_h = jnp.exp(jax.random.uniform(ks[3], (h,), jnp.float32, jnp.log(0.01), jnp.log(16.0)))
    g = -a_h * jax.nn.softplus(jax.random.normal(ks[4], (b, t, h), jnp.float32) - 3.0)
    beta = jax.nn.sigmoid(jax.random.normal(ks[5], (b, t, h), jnp.float32))
    s0 = 0.5 * jax.random.normal(ks[6], (b, h, dk, dv), jnp.float32)
    return q, k, v, g, beta, s0


def numpy_reference(x, heads):
    """float64 per-token recurrence on the first ``heads`` value heads (GQA by repeat-interleave)."""
    import numpy as np

    q, k, v, g, beta, s = (np.asarray(a, np.float64) for a in x)
    rep = v.shape[2] // k.shape[2]
    q, k = np.repeat(q, rep, axis=2)[:, :, :heads], np.repeat(k, rep, axis=2)[:, :, :heads]
    v, g, beta, s = v[:, :, :heads], g[:, :, :heads], beta[:, :, :heads], s[:, :heads]
    q = q / np.sqrt((q**2).sum(-1, keepdims=True) + 1e-6) / np.sqrt(q.shape[-1])
    k = k / np.sqrt((k**2).sum(-1, keepdims=True) + 1e-6)
    out = np.zeros(v.shape)
    for t in range(q.shape[1]):
        s = s * np.exp(g[:, t])[..., None, None]
        u = beta[:, t, :, None] * (v[:, t] - np.einsum("bhkv,bhk->bhv", s, k[:, t]))
        s = s + np.einsum("bhk,bhv->bhkv", k[:, t], u)
        out[:, t] = np.einsum("bhkv,bhk->bhv", s, q[:, t])
    return out, s


def bench(jax, fn, args, reps):
    out = fn(*args)
    jax.block_until_ready(out)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def cfg_name(cfg) -> str:
    return f"bv{cfg.block_v}/w{cfg.num_warps}/s{cfg.num_stages}/{cfg.precision}"


def all_configs(small: bool, quick: bool = False):
    from cortex_jax.kernels.gated_delta_pallas import PallasConfig

    if small:
        return [PallasConfig(block_v=32), PallasConfig(block_v=16)]
    if quick:
        grids = (("ieee", [(64, 4, 1), (32, 4, 1), (64, 8, 1)]), ("tf32x3", [(64, 4, 1)]))
    else:
        grids = (
            ("ieee", [(64, 4, 1), (64, 8, 1), (32, 4, 1), (32, 8, 1), (16, 4, 1), (64, 4, 2), (32, 4, 2)]),
            ("tf32x3", [(64, 4, 1), (64, 8, 1), (32, 4, 1)]),
            ("tf32", [(64, 4, 1)]),  # not fp32-accurate: for scale only
        )
    cfgs = [PallasConfig()]  # the shipped default first
    for prec, grid in grids:
        for bv, w, st in grid:
            c = PallasConfig(block_v=bv, num_warps=w, num_stages=st, precision=prec)
            if c not in cfgs:
                cfgs.append(c)
    return cfgs


# --------------------------------------------------------------------------------------------------------------
# probe: configs run one after another in a child process (one jax start-up); a crash or hang only loses the
# config being tried, and the parent restarts a child for the rest


def probe_main(cfgs_json: str) -> int:
    jax = setup(False)
    import jax.numpy as jnp
    import numpy as np

    from cortex_jax.kernels.gated_delta import chunked_gated_delta
    from cortex_jax.kernels.gated_delta_pallas import PallasConfig

    x = make_inputs(jax, 1, 300, 4, 4, 128, 128, seed=1)
    with jax.default_matmul_precision("highest"):
        ref = jax.jit(lambda *a: chunked_gated_delta(*a, chunk_size=64, impl="xla"))
        o_r, s_r = jax.block_until_ready(ref(*x))
    for i, d in enumerate(json.loads(cfgs_json)):
        cfg = PallasConfig(**d)
        print(f"START {i}", flush=True)
        res = {"index": i, "ok": False}
        try:
            f = jax.jit(lambda *a, cfg=cfg: chunked_gated_delta(*a, chunk_size=64, impl="pallas", pallas_config=cfg))
            t0 = time.perf_counter()
            o, s = jax.block_until_ready(f(*x))
            res["compile_run_s"] = round(time.perf_counter() - t0, 2)
            res["max_do"] = float(jnp.max(jnp.abs(o - o_r)))
            res["max_ds"] = float(jnp.max(jnp.abs(s - s_r)))
            res["ok"] = bool(np.isfinite(np.asarray(o)).all() and np.isfinite(np.asarray(s)).all())
            if not res["ok"]:
                res["error"] = "non-finite output"
        except Exception as e:  # noqa: BLE001 - report any lowering / compile / runtime failure
            res["error"] = short_error(e)
        print("PROBE " + json.dumps(res), flush=True)
    return 0


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


def run_probes(cfgs, timeout=300):
    """{config: result dict} for every config; crashed / hung configs get ok=False with the child's output tail."""
    results = {}
    remaining = list(cfgs)
    while remaining:
        payload = json.dumps([c._asdict() for c in remaining])
        cmd = [sys.executable, os.path.abspath(__file__), "--probe", payload]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
            out, err, why = proc.stdout, proc.stderr, f"child died (rc={proc.returncode})"
        except subprocess.TimeoutExpired as e:
            out, err, why = _text(e.stdout), _text(e.stderr), f"child timed out after {timeout}s"
        started = None
        for line in out.splitlines():
            if line.startswith("START "):
                started = int(line.split()[1])
            elif line.startswith("PROBE "):
                r = json.loads(line[6:])
                results[remaining[r["index"]]] = r
                started = None
        if started is None:  # finished (or died before any config / after the last one)
            for c in remaining:
                results.setdefault(c, {"ok": False, "error": f"{why} before this config:\n{(out + err)[-1500:]}"})
            break
        results[remaining[started]] = {"ok": False, "error": f"{why} while running it:\n{(out + err)[-1500:]}"}
        remaining = remaining[started + 1 :]
    return results


# --------------------------------------------------------------------------------------------------------------


class env_vars:
    """Set environment variables for a block (chunked_gated_delta reads CORTEX_GDN_* when it is traced)."""

    def __init__(self, **values):
        self.values, self.saved = values, {}

    def __enter__(self):
        for key, val in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = str(val)

    def __exit__(self, *exc):
        for key, old in self.saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def prologue_configs(small: bool):
    from cortex_jax.kernels.gated_delta_prologue import PrologueConfig, prologue_config_from_env

    default = prologue_config_from_env()  # what CORTEX_GDN_PROLOGUE=pallas uses (tf32x3 on GPU)
    if small:
        return [default, default._replace(block=8)]
    cfgs = [default]
    for warps in (4, 8):
        for block in (8, 16, 32):
            cfgs.append(PrologueConfig(num_warps=warps, block=block, precision="tf32x3"))
    cfgs.append(PrologueConfig(num_warps=4, block=16, precision="ieee"))  # fp32 FMA dots: for scale
    return list(dict.fromkeys(cfgs))


def prologue_cfg_name(cfg) -> str:
    return f"w{cfg.num_warps}/s{cfg.num_stages}/b{cfg.block}/{cfg.precision}"


def prologue_env(cfg) -> dict:
    return dict(
        CORTEX_GDN_PROLOGUE="pallas",
        CORTEX_GDN_PROLOGUE_WARPS=cfg.num_warps,
        CORTEX_GDN_PROLOGUE_STAGES=cfg.num_stages,
        CORTEX_GDN_PROLOGUE_BLOCK=cfg.block,
        CORTEX_GDN_PROLOGUE_PRECISION=cfg.precision,
    )


def prologue_main(jax, args) -> int:
    """P1-P3 of ``--prologue`` (see the module docstring)."""
    import jax.numpy as jnp
    import numpy as np

    from cortex_jax.kernels import gated_delta as gd
    from cortex_jax.kernels.gated_delta import chunked_gated_delta
    from cortex_jax.kernels.gated_delta_prologue import gdn_chunk_prologue

    small = args.small
    if small:
        b, h, hk, dk, dv, chunk = 2, 4, 2, 32, 32, 16
        lengths, acc_len, kernel_len, reps = [200], 100, 200, 3
    else:
        b, h, hk, dk, dv, chunk = 1, 48, 48, 128, 128, 64
        lengths, acc_len, kernel_len, reps = [8192], 2048, 8192, 20
    if args.lengths:
        lengths = [int(x) for x in args.lengths.split(",") if x]
    acc_len, kernel_len, reps = args.acc_len or acc_len, args.kernel_len or kernel_len, args.reps or reps
    on_gpu = jax.default_backend() == "gpu"
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(
        f"fused prologue check: B={b} H={h} Hk={hk} dk={dk} dv={dv} chunk={chunk}; kernel T={kernel_len}, "
        f"accuracy T={acc_len}, end-to-end T={lengths}, reps={reps}, interpret={not on_gpu}\n",
        flush=True,
    )
    summary = []

    def fail(what, e):
        print(f"  {what} FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
        summary.append((what, "FAIL", "-", "-"))

    # ---- P1: kernel only --------------------------------------------------------------------------------------
    print(f"== P1: prologue alone at T={kernel_len} ==", flush=True)
    x = make_inputs(jax, b, kernel_len, h, hk, dk, dv, seed=2)

    def prepare(q, k, v, g, beta, s0):  # _chunked_pallas up to the prologue (shared by both prologues)
        return gd.head_major_chunks(q, k, v, g, beta, s0, chunk, True)[:5]

    with jax.default_matmul_precision("highest"):
        pin = jax.block_until_ready(jax.jit(prepare)(*x))
        ref = jax.block_until_ready(jax.jit(lambda *a: gd.xla_prologue(*a, "blocked"))(*pin))
    ref_max = [float(jnp.max(jnp.abs(r))) for r in ref]

    def errors(out):  # max |Δ| of γ, U, W, A vs the HIGHEST XLA prologue
        return [float(jnp.max(jnp.abs(o - r))) for o, r in zip(out, ref, strict=True)]

    def err_text(errs):
        return " ".join(f"{n}={e:.1e}" for n, e in zip(("γ", "U", "W", "A"), errs, strict=True))

    xla_ms = None
    try:
        xla_ms, out = bench(jax, jax.jit(lambda *a: gd.xla_prologue(*a, "blocked")), pin, reps)
        errs = errors(out)
        print(
            f"  xla  _intra_chunk (blocked, default precision) {xla_ms:8.3f} ms   max|Δ| {err_text(errs)}", flush=True
        )
        summary.append(("P1 prologue alone", "xla", f"{xla_ms:.3f}", err_text(errs)))
        del out
    except Exception as e:  # noqa: BLE001
        fail("P1 xla prologue", e)
    kernel_res = {}
    for cfg in prologue_configs(small):
        name = prologue_cfg_name(cfg)
        try:
            f = jax.jit(lambda *a, cfg=cfg: gdn_chunk_prologue(*a, config=cfg, interpret=not on_gpu))
            ms, out = bench(jax, f, pin, reps)
            errs = errors(out)
            finite = all(bool(jnp.isfinite(o).all()) for o in out)
            rel = max(e / max(m, 1e-30) for e, m in zip(errs, ref_max, strict=True))
            kernel_res[cfg] = (ms, rel, finite)
            print(f"  pallas {name:26s} {ms:8.3f} ms   max|Δ| {err_text(errs)}  (max rel {rel:.1e})", flush=True)
            summary.append(("P1 prologue alone", f"pallas {name}", f"{ms:.3f}", err_text(errs)))
            del out
        except Exception as e:  # noqa: BLE001
            fail(f"P1 pallas {name}", e)
    print(f"  (max |ref|: γ={ref_max[0]:.1f} U={ref_max[1]:.1f} W={ref_max[2]:.2f} A={ref_max[3]:.2f})")
    good = [(v[0], c) for c, v in kernel_res.items() if v[2] and v[1] < 1e-4 and c.precision != "tf32"]
    best = min(good)[1] if good else None
    incl = {}
    if best is not None:
        print(f"  fastest accurate config: {prologue_cfg_name(best)}")
        variants = [("xla", lambda *a: gd.xla_prologue(*prepare(*a), "blocked"))]
        variants.append(("pallas", lambda *a: gdn_chunk_prologue(*prepare(*a), config=best, interpret=not on_gpu)))
        for label, fn in variants:
            try:
                ms, out = bench(jax, jax.jit(fn), x, reps)
                incl[label] = ms
                print(f"  with _prepare (l2norm, swap, pad): {label:6s} {ms:8.3f} ms", flush=True)
                summary.append(("P1 prepare+prologue", label, f"{ms:.3f}", "-"))
                del out
            except Exception as e:  # noqa: BLE001
                fail(f"P1 prepare+prologue {label}", e)
    del x, pin
    ref = None  # frees the reference outputs (errors() is not called after this)

    # ---- P2: accuracy vs float64 ------------------------------------------------------------------------------
    print(f"\n== P2: accuracy at T={acc_len} vs the float64 loop (heads 0-{min(HEADS_REF, h) - 1}) ==", flush=True)
    x = make_inputs(jax, b, acc_len, h, hk, dk, dv, seed=0)
    hr = min(HEADS_REF, h)
    o64, s64 = numpy_reference(jax.device_get(x), hr)
    acc = {}
    p_variants = [("xla prologue", dict(CORTEX_GDN_PROLOGUE="xla"))]
    p_variants.append(("pallas prologue (env default)", dict(CORTEX_GDN_PROLOGUE="pallas")))
    for label, env in p_variants:
        try:
            with env_vars(**env):
                f = jax.jit(lambda *a: chunked_gated_delta(*a, chunk_size=chunk, impl="pallas"))
                o, s = (np.asarray(a) for a in jax.block_until_ready(f(*x)))
            e64 = max(np.abs(o[:, :, :hr] - o64).max(), np.abs(s[:, :hr] - s64).max())
            acc[label] = e64 if np.isfinite(o).all() and np.isfinite(s).all() else float("inf")
            print(f"  pallas scan + {label:30s} vs f64 max|Δ|={e64:.2e}", flush=True)
            summary.append((f"P2 acc T={acc_len}", label, "-", f"f64 {e64:.1e}"))
        except Exception as e:  # noqa: BLE001
            fail(f"P2 {label}", e)
    del x

    # ---- P3: end to end ---------------------------------------------------------------------------------------
    print(f"\n== P3: end-to-end chunked_gated_delta (impl=pallas) at T={lengths} ==", flush=True)
    e2e_variants = [("xla prologue", dict(CORTEX_GDN_PROLOGUE="xla"))]
    e2e_variants.append(("pallas prologue (env default)", dict(CORTEX_GDN_PROLOGUE="pallas")))
    if best is not None:
        e2e_variants.append((f"pallas prologue {prologue_cfg_name(best)}", prologue_env(best)))
    e2e = {}
    for t in lengths:
        x = make_inputs(jax, b, t, h, hk, dk, dv, seed=3)
        base = None
        for label, env in e2e_variants:
            try:
                with env_vars(**env):
                    f = jax.jit(lambda *a: chunked_gated_delta(*a, chunk_size=chunk, impl="pallas"))
                    ms, (o, s) = bench(jax, f, x, reps)
                if base is None:
                    base, do, ds = (o, s), 0.0, 0.0
                else:
                    do = float(jnp.max(jnp.abs(o - base[0])))
                    ds = float(jnp.max(jnp.abs(s - base[1])))
                e2e[(t, label)] = ms
                print(
                    f"  T={t:6d} {label:44s} {ms:9.3f} ms   vs xla prologue max|Δo|={do:.2e} max|Δs|={ds:.2e}",
                    flush=True,
                )
                summary.append((f"P3 e2e T={t}", label, f"{ms:.3f}", f"Δo {do:.1e} Δs {ds:.1e}"))
                del o, s
            except Exception as e:  # noqa: BLE001
                fail(f"P3 T={t} {label}", e)
        del x, base

    # ---- summary ----------------------------------------------------------------------------------------------
    print("\n== summary ==")
    hdr = ("phase", "variant", "ms", "error")
    widths = [max(len(str(r[i])) for r in [hdr, *summary]) for i in range(len(hdr))]
    for r in [hdr, *summary]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    t_main = lengths[-1]
    ms_x = e2e.get((t_main, "xla prologue"))
    ms_p = e2e.get((t_main, "pallas prologue (env default)"))
    ms_b = e2e.get((t_main, f"pallas prologue {prologue_cfg_name(best)}")) if best is not None else None
    if best is None or ms_x is None or ms_p is None:
        print("\nPROLOGUE RESULT: fused prologue FAILED or inaccurate (see above); keep CORTEX_GDN_PROLOGUE=xla")
        return 1
    best_ms = kernel_res[best][0]
    e_x, e_p = acc.get("xla prologue", float("nan")), acc.get("pallas prologue (env default)", float("nan"))
    print(
        f"\nPROLOGUE RESULT: kernel alone {best_ms:.3f} ms ({prologue_cfg_name(best)}) vs XLA "
        f"{xla_ms if xla_ms is not None else float('nan'):.3f} ms; with _prepare {incl.get('pallas', float('nan')):.3f}"
        f" vs {incl.get('xla', float('nan')):.3f} ms; layer e2e T={t_main}: {ms_p:.3f} ms (env default config)"
        + (f", {ms_b:.3f} ms (fastest config)" if ms_b is not None else "")
        + f" vs {ms_x:.3f} ms (xla prologue); vs f64 at T={acc_len}: {e_p:.1e} (pallas) vs {e_x:.1e} (xla)"
    )
    faster = min(ms_p, ms_b or ms_p) < ms_x
    accurate = e_p <= max(2 * e_x, 1e-3)
    verdict = "flip the default to pallas" if faster and accurate else "keep xla"
    print(
        f"PROLOGUE VERDICT: {verdict} (faster: {faster}, accurate: {accurate}); fastest config env: "
        + " ".join(f"{k}={v}" for k, v in prologue_env(best).items())
    )
    return 0


def main() -> int:
    args = parse_args()
    if args.probe is not None:
        return probe_main(args.probe)
    small = args.small
    jax = setup(small)
    if args.prologue:
        return prologue_main(jax, args)
    import jax.numpy as jnp
    import numpy as np

    from cortex_jax.kernels import gated_delta as gd
    from cortex_jax.kernels.gated_delta import chunked_gated_delta, recurrent_gated_delta
    from cortex_jax.kernels.gated_delta_pallas import PallasConfig, gdn_chunk_scan

    if small:
        b, h, hk, dk, dv, chunk = 2, 4, 2, 32, 32, 16
        lengths = [100, 200]
        acc_len, kernel_len, reps = 100, 200, 3
    else:
        b, h, hk, dk, dv, chunk = 1, 48, 48, 128, 128, 64
        lengths = [2048, 8192, 32768]
        acc_len, kernel_len, reps = 2048, 8192, 20
    if args.lengths:
        lengths = [int(s) for s in args.lengths.split(",") if s]
    acc_len = args.acc_len or acc_len
    kernel_len = args.kernel_len or kernel_len
    reps = args.reps or reps
    on_gpu = jax.default_backend() == "gpu"

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    try:
        from jax.experimental.pallas import triton as _plt  # noqa: F401

        print("jax.experimental.pallas.triton: importable")
    except Exception as e:  # noqa: BLE001
        print(f"jax.experimental.pallas.triton: NOT importable: {short_error(e, 300)}")
    print(f"shapes: B={b} H={h} Hk={hk} dk={dk} dv={dv} chunk={chunk}; accuracy T={acc_len}, kernel T={kernel_len}")
    print(f"end-to-end T={lengths}, reps={reps}, interpret={not on_gpu}\n", flush=True)

    summary = []  # rows for the final table

    # ---- phase 1: probe ------------------------------------------------------------------------------------
    configs = all_configs(small, args.quick)
    working = []
    if on_gpu and not args.no_probe:
        print(f"== phase 1: probe {len(configs)} Pallas configs in a child process (T=300, H=4) ==", flush=True)
        t0 = time.perf_counter()
        results = run_probes(configs)
        for cfg in configs:
            r = results[cfg]
            if r.get("ok"):
                working.append(cfg)
                print(
                    f"  {cfg_name(cfg):24s} OK   compile+run {r.get('compile_run_s')}s  "
                    f"max|Δo|={r['max_do']:.2e} max|Δs|={r['max_ds']:.2e} (vs xla, highest)",
                    flush=True,
                )
            else:
                print(f"  {cfg_name(cfg):24s} FAIL\n    " + str(r.get("error", r)).replace("\n", "\n    "), flush=True)
                summary.append(("probe", cfg_name(cfg), "-", "FAIL", "-", "-"))
        print(f"  probing took {time.perf_counter() - t0:.0f}s", flush=True)
    else:
        working = list(configs)
    default_cfg = PallasConfig()
    if not working:
        print("\nno Pallas config works; only the XLA path is timed.", flush=True)

    # ---- phase 2: accuracy ----------------------------------------------------------------------------------
    print(f"\n== phase 2: accuracy at T={acc_len} ==", flush=True)
    x = make_inputs(jax, b, acc_len, h, hk, dk, dv, seed=0)
    t0 = time.perf_counter()
    o64, s64 = numpy_reference(jax.device_get(x), min(HEADS_REF, h))
    print(f"  float64 numpy reference (heads 0-{min(HEADS_REF, h) - 1}): {time.perf_counter() - t0:.1f}s")
    with jax.default_matmul_precision("highest"):
        o_rec, s_rec = jax.block_until_ready(jax.jit(recurrent_gated_delta)(*x))
    o_rec, s_rec = np.asarray(o_rec), np.asarray(s_rec)
    hr = min(HEADS_REF, h)
    print(
        f"  fp32 XLA recurrence (highest) vs float64: max|Δo|={np.abs(o_rec[:, :, :hr] - o64).max():.2e} "
        f"max|Δs|={np.abs(s_rec[:, :hr] - s64).max():.2e}  (max|o|={np.abs(o64).max():.2f}, "
        f"max|s|={np.abs(s64).max():.2f})",
        flush=True,
    )

    def variants_acc():
        yield "xla/trsm (old)", dict(impl="xla", solve="trsm"), None
        yield "xla/blocked", dict(impl="xla", solve="blocked"), None
        yield "xla/blocked@highest", dict(impl="xla", solve="blocked"), "highest"
        yield "xla/inverse", dict(impl="xla", solve="inverse"), None
        yield "xla/merge", dict(impl="xla", solve="merge"), None
        # (every config is also checked against the XLA path in phases 1 and 3)
        for cfg in working[:1] if on_gpu else working:
            for solve in ("blocked", "merge"):
                kw = dict(impl="pallas", solve=solve, pallas_config=cfg)
                yield f"pallas/{cfg_name(cfg)}/{solve}", kw, None

    acc_ok = {}
    for name, kw, prec in variants_acc():
        try:
            f = jax.jit(lambda *a, kw=kw: chunked_gated_delta(*a, chunk_size=chunk, **kw))
            if prec:
                with jax.default_matmul_precision(prec):
                    o, s = jax.block_until_ready(f(*x))
            else:
                o, s = jax.block_until_ready(f(*x))
            o, s = np.asarray(o), np.asarray(s)
            e64 = max(np.abs(o[:, :, :hr] - o64).max(), np.abs(s[:, :hr] - s64).max())
            erec_o, erec_s = np.abs(o - o_rec).max(), np.abs(s - s_rec).max()
            acc_ok[name] = bool(np.isfinite(o).all() and np.isfinite(s).all())
            print(
                f"  {name:34s} vs f64 max|Δ|={e64:.2e}   vs fp32 rec: max|Δo|={erec_o:.2e} max|Δs|={erec_s:.2e}",
                flush=True,
            )
            summary.append((f"acc T={acc_len}", name, "-", f"{e64:.1e}", f"{erec_o:.1e}", f"{erec_s:.1e}"))
        except Exception as e:  # noqa: BLE001
            acc_ok[name] = False
            print(f"  {name:34s} FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
            summary.append((f"acc T={acc_len}", name, "-", "FAIL", "-", "-"))
    del x

    # ---- phase 3: kernel-only and prologue timing --------------------------------------------------------
    print(f"\n== phase 3: kernel-only / prologue timing at T={kernel_len} ==", flush=True)
    x = make_inputs(jax, b, kernel_len, h, hk, dk, dv, seed=2)

    def prologue(q, k, v, g, beta, s0, solve):
        q, k, v, g, beta, s0, _ = gd.head_major_chunks(q, k, v, g, beta, s0, chunk, True)
        gam, u, w, attn = gd.xla_prologue(q, k, v, g, beta, solve)
        return q, k, u, w, attn, gam, s0

    kin = None
    prologue_ms = {}
    for solve in gd.SOLVE_METHODS:
        try:
            f = jax.jit(lambda *a, solve=solve: prologue(*a, solve))
            ms, out = bench(jax, f, x, reps)
            prologue_ms[solve] = ms
            del out
            print(f"  prologue solve={solve:8s} {ms:8.3f} ms", flush=True)
            summary.append((f"prologue T={kernel_len}", f"solve={solve}", f"{ms:.3f}", "-", "-", "-"))
        except Exception as e:  # noqa: BLE001
            print(f"  prologue solve={solve:8s} FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
    kernel_ms = {}
    with jax.default_matmul_precision("highest"):  # kernel inputs and reference without tf32 anywhere
        try:
            kin = jax.block_until_ready(jax.jit(lambda *a: prologue(*a, "blocked"))(*x))
        except Exception as e:  # noqa: BLE001
            print("  prologue@highest FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
    if kin is not None:
        with jax.default_matmul_precision("highest"):
            ref = jax.jit(lambda *a: chunked_gated_delta(*a, chunk_size=chunk, impl="xla", solve="blocked"))
            o_ref, s_ref = jax.block_until_ready(ref(*x))
        for cfg in working:
            try:
                f = jax.jit(lambda *a, cfg=cfg: gdn_chunk_scan(*a, config=cfg, interpret=not on_gpu))
                ms, (o, s) = bench(jax, f, kin, reps)
                do = float(jnp.max(jnp.abs(o[:, :kernel_len] - o_ref)))
                ds = float(jnp.max(jnp.abs(s - s_ref)))
                kernel_ms[cfg] = (ms, do, ds)
                print(f"  kernel {cfg_name(cfg):24s} {ms:8.3f} ms   vs xla@highest max|Δo|={do:.2e} max|Δs|={ds:.2e}")
                summary.append((f"kernel T={kernel_len}", cfg_name(cfg), f"{ms:.3f}", "-", f"{do:.1e}", f"{ds:.1e}"))
            except Exception as e:  # noqa: BLE001
                print(f"  kernel {cfg_name(cfg):24s} FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
                summary.append((f"kernel T={kernel_len}", cfg_name(cfg), "FAIL", "-", "-", "-"))
        del o_ref, s_ref
    del x, kin

    def best(prec):
        cands = [(v[0], c) for c, v in kernel_ms.items() if c.precision == prec and v[1] < 1e-2 and v[2] < 1e-2]
        return min(cands)[1] if cands else None

    best_ieee, best_x3 = best("ieee"), best("tf32x3")
    if best_ieee:
        print(f"  fastest ieee config: {cfg_name(best_ieee)}")
    if best_x3:
        print(f"  fastest tf32x3 config: {cfg_name(best_x3)}")

    # ---- phase 4: end to end --------------------------------------------------------------------------------
    print(f"\n== phase 4: end-to-end chunked_gated_delta at T={lengths} ==", flush=True)
    # fastest solve among those that were accurate in phase 2
    acc_solves = [m for m in prologue_ms if acc_ok.get("xla/trsm (old)" if m == "trsm" else f"xla/{m}")]
    best_solve = min(acc_solves, key=prologue_ms.get) if acc_solves else "blocked"
    print(f"  fastest accurate solve: {best_solve}")
    e2e = [("xla/trsm (old)", dict(impl="xla", solve="trsm"))]
    for solve in dict.fromkeys(["blocked", best_solve]):
        e2e.append((f"xla/{solve}", dict(impl="xla", solve=solve)))
    pallas_cfgs = []
    for cfg in (default_cfg, best_ieee, best_x3):
        if cfg is not None and cfg in working and cfg not in pallas_cfgs:
            pallas_cfgs.append(cfg)
    for cfg in pallas_cfgs:
        for solve in dict.fromkeys(["blocked", best_solve]):
            e2e.append((f"pallas/{cfg_name(cfg)}/{solve}", dict(impl="pallas", solve=solve, pallas_config=cfg)))
    for t in lengths:
        x = make_inputs(jax, b, t, h, hk, dk, dv, seed=3)
        base = None
        for name, kw in e2e:
            try:
                f = jax.jit(lambda *a, kw=kw: chunked_gated_delta(*a, chunk_size=chunk, **kw))
                ms, (o, s) = bench(jax, f, x, reps)
                if base is None:
                    base = (o, s)
                    do = ds = 0.0
                else:
                    do = float(jnp.max(jnp.abs(o - base[0])))
                    ds = float(jnp.max(jnp.abs(s - base[1])))
                print(f"  T={t:6d} {name:40s} {ms:9.3f} ms   vs xla/trsm max|Δo|={do:.2e} max|Δs|={ds:.2e}", flush=True)
                summary.append((f"e2e T={t}", name, f"{ms:.3f}", "-", f"{do:.1e}", f"{ds:.1e}"))
                del o, s
            except Exception as e:  # noqa: BLE001
                print(f"  T={t:6d} {name:40s} FAIL\n    " + short_error(e).replace("\n", "\n    "), flush=True)
                summary.append((f"e2e T={t}", name, "FAIL", "-", "-", "-"))
        del x, base

    # ---- summary --------------------------------------------------------------------------------------------
    print("\n== summary ==  (ms: median wall time; f64: max|Δ| vs float64 loop; Δo/Δs: vs the row's reference)")
    hdr = ("phase", "variant", "ms", "f64", "Δo", "Δs")
    widths = [max(len(str(r[i])) for r in [hdr, *summary]) for i in range(len(hdr))]
    for r in [hdr, *summary]:
        print("  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    if best_ieee:
        c = best_ieee
        print(
            f"\nfastest fp32-exact kernel config -> CORTEX_GDN_PALLAS_BV={c.block_v} CORTEX_GDN_PALLAS_WARPS="
            f"{c.num_warps} CORTEX_GDN_PALLAS_STAGES={c.num_stages} CORTEX_GDN_PALLAS_PRECISION={c.precision}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
