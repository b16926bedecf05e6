"""Side-by-side anchor benchmark on one card: our JAX kernels/model against flash-linear-attention and HF transformers.

Measures in one run, on the same card, each part in its own subprocess (torch and JAX never share the GPU):

(a) Gated DeltaNet chunked prefill, one layer's call at the Qwen3.6-27B shapes (B=1, 16 key heads repeated x3 to
    Hv=48 value heads, dk=dv=128, T = 2048 / 8192 / 32768):
    - ours: ``cortex_jax.kernels.gated_delta.chunked_gated_delta`` jitted, called as models/qwen36/gated_deltanet.py
      calls it (q, k bf16 at the 16 key heads, v bf16, g/beta fp32, fp32 state, l2norm inside); with
      ``--jax-variants`` also under other settings of its kernels (``GDN_VARIANTS``: recurrence form, dot
      precision, prologue), each checked against fla and the reference;
    - fla: ``fla.ops.gated_delta_rule.chunk_gated_delta_rule`` (Triton, PyPI ``fla-core``), called as HF transformers
      5.17 calls it (q/k repeated to Hv heads, bf16 q/k/v/beta, fp32 g, ``use_qk_l2norm_in_kernel=True``, fp32 final
      state); plus ``fla-gva`` (q/k left at 16 heads, fla's grouped-value path) for information;
    - ref: a plain fp32 per-token recurrence in torch at the shortest T <= 2048 (every T with --small), the ground
      truth for both.
    Same random inputs for all (written once as .npy, bf16-exact values); reports ms, tokens/s, ms x48 layers, and
    max-abs / relative-RMS differences of the outputs and final states.
(b) HF transformers ``Qwen3_5ForCausalLM`` on the real Qwen3.6-27B text config, random bf16 weights created on the
    GPU, sdpa attention, fla kernels picked up automatically when ``fla`` is importable (the script reports which
    implementation HF bound for chunk / recurrent delta rule and the causal conv, and any runtime fallback warning):
    prefill tok/s at 512 / 2048 / 8192 (one forward with a fresh cache, last-token logits only, as our prefill step
    does; median of a few reps) and batch-1 decode ms/step at 2048 tokens of context (prefill, then single-token
    forwards through the model's own cache object; no generate(), no sampling).

Device command (fla-core 0.6.0 is pure Python; its only hard requirement, einops, is on the box; ``.whl/`` is
git-ignored, so it must be carried: ``carry=[".whl"]``). About 3-5 minutes; the JSON is rewritten after every part,
and ``--budget`` (570 s) cuts part timeouts so the run ends inside one 600 s device call:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site:. && python3 scripts/bench_anchor.py --out $OUT/bench_anchor.json

Parts can be run alone: ``--parts gdn`` or ``--parts hf``; shapes with ``--gdn-lengths``, ``--hf-prefill`` etc.
HF versions differ in how they call fla: 5.17 (the GPU box) repeats q/k to the value heads first (the "fla" row),
5.23 passes the 16 key heads and lets fla do grouped values (the "fla-gva" row).

CPU smoke run (tiny shapes and a tiny HF config; fla is skipped with its reason, ours is compared with the torch
reference instead):

    PYTHONPATH=. python scripts/bench_anchor.py --small

Package naming: the import name is ``fla``; PyPI ``fla-core`` ships ``fla.ops`` / ``fla.modules`` (all the kernels
HF needs), ``flash-linear-attention`` adds ``fla.layers`` / ``fla.models`` on top and pulls in more requirements.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.qwen36.presets import QWEN36_27B_TEXT  # noqa: E402  (plain data: no JAX or torch)

SMALL_TEXT: dict[str, Any] = dict(
    QWEN36_27B_TEXT, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"],
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, linear_num_key_heads=2, linear_num_value_heads=6,
    linear_key_head_dim=16, linear_value_head_dim=16,
    rope_parameters={"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25,
                     "mrope_section": [3, 3, 2], "mrope_interleaved": True},
    eos_token_id=1,
)

# GDN kernel shapes: key heads, value heads, dk, dv
GDN_27B = {"hk": 16, "hv": 48, "dk": 128, "dv": 128}
GDN_SMALL = {"hk": 2, "hv": 6, "dk": 32, "dv": 32}

# named settings of our GDN prefill path (environment variables read when chunked_gated_delta is traced), for
# --jax-variants: "default" is what ships; the others pin the recurrence form (fused loop / split states+output),
# the dot precision of the Pallas kernels and the prologue (XLA or the fused Pallas kernel)
_SPLIT = {"CORTEX_GDN_PALLAS_SPLIT": "1"}
_FUSED = {"CORTEX_GDN_PALLAS_SPLIT": "0"}
_PROLOGUE = {"CORTEX_GDN_PROLOGUE": "pallas"}
GDN_VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    **{f"{form}-{prec}": {**env, "CORTEX_GDN_PALLAS_PRECISION": prec}
       for form, env in (("fused", _FUSED), ("split", _SPLIT)) for prec in ("tf32x3", "tf32", "bf16")},
    **{f"split-{prec}+prologue": {**_SPLIT, **_PROLOGUE, "CORTEX_GDN_PALLAS_PRECISION": prec,
                                  "CORTEX_GDN_PROLOGUE_PRECISION": prec} for prec in ("tf32x3", "tf32", "bf16")},
}
# launch settings of the default (split, bf16, Pallas prologue): value tile of the sequential kernel, its
# pipelining stages, warps of the output kernel and of the prologue
GDN_VARIANTS.update({
    f"tuned-{name}": {**GDN_VARIANTS["split-bf16+prologue"], **env} for name, env in (
        ("bv32", {"CORTEX_GDN_PALLAS_BV": "32"}), ("bv16", {"CORTEX_GDN_PALLAS_BV": "16"}),
        ("bv128", {"CORTEX_GDN_PALLAS_BV": "128"}), ("stages2", {"CORTEX_GDN_PALLAS_STAGES": "2"}),
        ("bv32-stages2", {"CORTEX_GDN_PALLAS_BV": "32", "CORTEX_GDN_PALLAS_STAGES": "2"}),
        ("out8", {"CORTEX_GDN_PALLAS_OUT_WARPS": "8"}), ("prologue8", {"CORTEX_GDN_PROLOGUE_WARPS": "8"}),
        ("warps8", {"CORTEX_GDN_PALLAS_WARPS": "8"}), ("warps2", {"CORTEX_GDN_PALLAS_WARPS": "2"}),
        ("stages1", {"CORTEX_GDN_PALLAS_STAGES": "1"}), ("stages3", {"CORTEX_GDN_PALLAS_STAGES": "3"}),
        ("stages4", {"CORTEX_GDN_PALLAS_STAGES": "4"}),
        ("bv32-stages3", {"CORTEX_GDN_PALLAS_BV": "32", "CORTEX_GDN_PALLAS_STAGES": "3"}),
        ("warps2-stages3", {"CORTEX_GDN_PALLAS_WARPS": "2", "CORTEX_GDN_PALLAS_STAGES": "3"}),
        ("prologue-stages2", {"CORTEX_GDN_PROLOGUE_STAGES": "2"}),
    )
})

FALLBACK_MARK = "falling back to its reference PyTorch implementation"


# ----------------------------------------------------------------------------------------------------------------
# shared helpers (numpy only: the parent process imports neither torch nor jax)


def log(msg: str) -> None:
    print(msg, flush=True)


def timed(fn, reps: int, warmup: int) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` (which must block until its device work is done), and all samples."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def err(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"


def write_json(path: Path | str, obj: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
    os.replace(tmp, path)


def make_gdn_inputs(wd: Path, t_max: int, shapes: dict, seed: int, h0_scale: float) -> dict:
    """Random GDN inputs at the longest T (shorter runs use prefixes), bf16-exact where the model has bf16.

    q, k ~ N(0,1) [1,T,Hk,dk]; v ~ N(0,1) [1,T,Hv,dv]; beta = sigmoid(N(0,1)) (bf16, as HF computes it);
    g = -exp(A_log)·softplus(a + dt_bias) fp32 with a ~ N(0,1), dt_bias = 1, A = exp(A_log) ~ U(0.01, 16) per head
    (HF's init); h0 = h0_scale·N(0,1) fp32 [1,Hv,dk,dv].
    """
    rng = np.random.default_rng(seed)
    hk, hv, dk, dv = shapes["hk"], shapes["hv"], shapes["dk"], shapes["dv"]
    np.save(wd / "q.npy", bf16_bits(rng.standard_normal((1, t_max, hk, dk), np.float32)))
    np.save(wd / "k.npy", bf16_bits(rng.standard_normal((1, t_max, hk, dk), np.float32)))
    np.save(wd / "v.npy", bf16_bits(rng.standard_normal((1, t_max, hv, dv), np.float32)))
    beta = 1.0 / (1.0 + np.exp(-rng.standard_normal((1, t_max, hv), np.float32)))
    np.save(wd / "beta.npy", bf16_bits(beta))
    a_log = np.log(rng.uniform(0.01, 16.0, (hv,))).astype(np.float32)
    a = rng.standard_normal((1, t_max, hv), np.float32)
    g = -np.exp(a_log) * np.logaddexp(0.0, a + 1.0)  # softplus
    np.save(wd / "g.npy", g.astype(np.float32))
    np.save(wd / "h0.npy", (h0_scale * rng.standard_normal((1, hv, dk, dv), np.float32)).astype(np.float32))
    return {"seed": seed, "t_max": t_max, "h0_scale": h0_scale, "g_min": float(g.min()), "g_mean": float(g.mean()),
            "A_log": a_log.tolist()}


def load_gdn_inputs(wd: Path, t: int) -> dict[str, np.ndarray]:
    """Prefix of length t of every input; bf16 ones as uint16 bit patterns."""
    out = {}
    for name in ("q", "k", "v", "beta", "g"):
        out[name] = np.array(np.load(wd / f"{name}.npy", mmap_mode="r")[:, :t])  # a writable copy
    out["h0"] = np.load(wd / "h0.npy")
    return out


def diff_stats(a: np.ndarray, b: np.ndarray) -> dict:
    """a vs b (b the reference): max |a-b|, max |b|, relative RMS error ‖a-b‖/‖b‖, non-finite counts."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    d = np.abs(a - b)
    nb = float(np.sqrt(np.mean(np.square(b, dtype=np.float64))))
    return {"max_abs_diff": float(np.nanmax(d)) if d.size else 0.0, "max_abs_ref": float(np.abs(b).max()),
            "rel_rms": float(np.sqrt(np.mean(np.square(d, dtype=np.float64))) / nb) if nb > 0 else float("nan"),
            "nonfinite_a": int((~np.isfinite(a)).sum()), "nonfinite_b": int((~np.isfinite(b)).sum())}


# ----------------------------------------------------------------------------------------------------------------
# part gdn-jax: our kernel


def part_gdn_jax(args, wd: Path) -> dict:
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(ROOT))
    from cortex_jax.kernels.gated_delta import chunked_gated_delta

    dev = jax.devices()[0]
    res: dict[str, Any] = {"jax": jax.__version__, "device": dev.device_kind, "platform": dev.platform,
                           "mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"), "rows": []}
    log(f"[gdn-jax] jax {jax.__version__} on {dev.device_kind} ({dev.platform})")
    chunk = args.jax_chunk

    for variant in args.jax_variants:
        env = GDN_VARIANTS[variant]
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)  # read when the function below is traced
        name = "ours" if variant == "default" else f"ours:{variant}"

        @jax.jit
        def fn(q, k, v, g, beta, h0):
            return chunked_gated_delta(q, k, v, g, beta, h0, chunk_size=chunk, use_qk_l2norm=True)

        for t in args.gdn_lengths:
            row: dict[str, Any] = {"impl": name, "variant": variant, "env": env, "T": t, "chunk": chunk}
            try:
                x = load_gdn_inputs(wd, t)
                bf = lambda b: jnp.asarray(b.view(jnp.bfloat16))
                # as models/qwen36/gated_deltanet.py calls it: q/k at their 16 key heads, v at 48 value heads
                q, k, v = bf(x["q"]), bf(x["k"]), bf(x["v"])
                g = jnp.asarray(x["g"])
                beta = jnp.asarray(bits_to_f32(x["beta"]))  # the model casts beta to fp32
                h0 = jnp.asarray(x["h0"])
                t0 = time.perf_counter()
                compiled = fn.lower(q, k, v, g, beta, h0).compile()
                row["compile_s"] = time.perf_counter() - t0
                out = {}

                def run(q=q, k=k, v=v, g=g, beta=beta, h0=h0, compiled=compiled, out=out):
                    o, s = compiled(q, k, v, g, beta, h0)
                    jax.block_until_ready((o, s))
                    out["o"], out["s"] = o, s

                sec, samples = timed(run, reps=args.reps, warmup=2)
                row.update(ms=sec * 1e3, tok_per_s=t / sec, samples_ms=[s * 1e3 for s in samples])
                np.save(wd / f"out_{name}_o_{t}.npy", np.asarray(out["o"], np.float32)[0])
                np.save(wd / f"out_{name}_s_{t}.npy", np.asarray(out["s"], np.float32)[0])
                log(f"[gdn-jax] {variant:22s} T={t:6d}: {sec * 1e3:8.2f} ms  {t / sec:10.0f} tok/s  "
                    f"(compile {row['compile_s']:.1f} s)")
                del out, q, k, v, g, beta, h0, compiled
            except Exception as e:  # e.g. out of device memory at the longest T: record it, keep going
                row["error"] = err(e)
                log(f"[gdn-jax] {variant} T={t}: FAILED {row['error']}")
            res["rows"].append(row)
            write_json(wd / "part_gdn-jax.json", res)  # a variant that hangs still leaves the ones before it
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
    return res


# ----------------------------------------------------------------------------------------------------------------
# part gdn-torch: fla's Triton kernel (GPU) and a plain fp32 recurrence (reference)


def _torch_ref_recurrent(q, k, v, g, beta, h0):
    """fp32 per-token gated delta rule, l2norm(q)·dk^-0.5 and l2norm(k) (eps 1e-6, as HF), q/k at Hv heads."""
    import torch

    q, k, v, g, beta, s = (x.float() for x in (q, k, v, g, beta, h0))
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * q.shape[-1] ** -0.5
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    o = torch.empty_like(v)
    for i in range(q.shape[1]):
        s = s * torch.exp(g[:, i])[..., None, None]
        u = beta[:, i, :, None] * (v[:, i] - torch.einsum("bhkv,bhk->bhv", s, k[:, i]))
        s = s + k[:, i, :, :, None] * u[:, :, None, :]
        o[:, i] = torch.einsum("bhkv,bhk->bhv", s, q[:, i])
    return o, s


def part_gdn_torch(args, wd: Path) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    res: dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if cuda else "cpu",
                           "rows": []}
    log(f"[gdn-torch] torch {torch.__version__} on {res['device']}")
    fla_fn, fla_reason = None, None
    if not cuda:
        fla_reason = "skipped: fla's chunk_gated_delta_rule is a Triton kernel and needs a CUDA GPU"
    else:
        try:
            import fla
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_fn

            res["fla"] = getattr(fla, "__version__", "?")
            res["fla_file"] = getattr(fla, "__file__", "?")
            try:
                import triton

                res["triton"] = triton.__version__
            except Exception as e:
                res["triton"] = err(e)
            import importlib.util

            res["fla_backend"] = ("flash_qla available (fla may dispatch to it)"
                                  if importlib.util.find_spec("flash_qla") else "triton (flash_qla not installed)")
        except Exception as e:
            fla_fn, fla_reason = None, f"skipped: cannot import fla ({err(e)}); install fla-core"
    if fla_reason:
        res["fla_skipped"] = fla_reason
        log(f"[gdn-torch] fla {fla_reason}")
    else:
        log(f"[gdn-torch] fla {res['fla']} ({res['fla_backend']}), triton {res.get('triton')}")

    rep = args.gdn_shapes["hv"] // args.gdn_shapes["hk"]
    dk = args.gdn_shapes["dk"]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def tensor_bf16(b):
        return torch.from_numpy(b.view(np.int16)).view(torch.bfloat16).to(dev)

    ref_done = False
    for t in args.gdn_lengths:
        try:
            x = load_gdn_inputs(wd, t)
        except Exception as e:
            res["rows"].append({"impl": "fla", "T": t, "error": err(e)})
            continue
        with torch.inference_mode():
            q16, k16 = tensor_bf16(x["q"]), tensor_bf16(x["k"])
            q = q16.repeat_interleave(rep, dim=2).contiguous()  # as HF 5.17 does before calling the kernel
            k = k16.repeat_interleave(rep, dim=2).contiguous()
            v = tensor_bf16(x["v"])
            beta = tensor_bf16(x["beta"])  # HF: b.sigmoid() in the model dtype
            g = torch.from_numpy(x["g"]).to(dev)
            h0 = torch.from_numpy(x["h0"]).to(dev)
            h0_arg = h0 if args.h0_scale else None  # HF's prefill passes no initial state

            variants = [] if fla_fn is None else [("fla", q, k), ("fla-gva", q16, k16)]
            for name, qq, kk in variants:
                row: dict[str, Any] = {"impl": name, "T": t}
                try:
                    out = {}

                    def run(qq=qq, kk=kk, v=v, g=g, beta=beta, h0_arg=h0_arg, out=out):
                        o, s = fla_fn(qq, kk, v, g, beta, scale=dk**-0.5, initial_state=h0_arg,
                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
                        sync()
                        out["o"], out["s"] = o, s

                    t0 = time.perf_counter()
                    run()  # first call: Triton compile + autotune
                    row["first_call_s"] = time.perf_counter() - t0
                    sec, samples = timed(run, reps=args.reps, warmup=2)
                    row.update(ms=sec * 1e3, tok_per_s=t / sec, samples_ms=[s * 1e3 for s in samples],
                               o_dtype=str(out["o"].dtype), state_dtype=str(out["s"].dtype))
                    if cuda:
                        row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
                    np.save(wd / f"out_{name}_o_{t}.npy", out["o"].float().cpu().numpy()[0])
                    np.save(wd / f"out_{name}_s_{t}.npy", out["s"].float().cpu().numpy()[0])
                    log(f"[gdn-torch] {name:8s} T={t:6d}: {sec * 1e3:8.2f} ms  {t / sec:10.0f} tok/s  "
                        f"(first call {row['first_call_s']:.1f} s)")
                    del out
                except Exception as e:
                    row["error"] = err(e)
                    log(f"[gdn-torch] {name} T={t}: FAILED {row['error']}")
                    if cuda:
                        torch.cuda.empty_cache()
                res["rows"].append(row)

            if (not ref_done or args.small) and t <= args.ref_max_t:
                ref_done = True
                row = {"impl": "ref", "T": t, "note": "fp32 per-token torch loop, correctness reference only"}
                try:
                    t0 = time.perf_counter()
                    o, s = _torch_ref_recurrent(q, k, v, g, beta, h0)
                    sync()
                    row["seconds"] = time.perf_counter() - t0
                    np.save(wd / f"out_ref_o_{t}.npy", o.cpu().numpy()[0])
                    np.save(wd / f"out_ref_s_{t}.npy", s.cpu().numpy()[0])
                    log(f"[gdn-torch] ref      T={t:6d}: done in {row['seconds']:.1f} s")
                except Exception as e:
                    row["error"] = err(e)
                    log(f"[gdn-torch] ref T={t}: FAILED {row['error']}")
                res["rows"].append(row)
            del q, k, v, beta, g, h0, q16, k16
        if cuda:
            torch.cuda.empty_cache()
    return res


# ----------------------------------------------------------------------------------------------------------------
# part hf: transformers Qwen3_5ForCausalLM


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.messages.append(record.getMessage())


def _bound_impl(fn) -> str:
    """Which implementation an HF kernel-with-fallback function is bound to: the first function reachable through
    ``__wrapped__`` / closures that lives outside transformers (fla, causal_conv1d, a hub kernel), else 'torch'."""
    seen, stack = set(), [fn]
    while stack:
        f = stack.pop()
        if id(f) in seen or len(seen) > 200:
            continue
        seen.add(id(f))
        mod = getattr(f, "__module__", None) or ""
        if callable(f) and mod and not mod.startswith(("transformers", "torch", "functools", "builtins")):
            return f"{mod}.{getattr(f, '__qualname__', getattr(f, '__name__', '?'))}"
        if (w := getattr(f, "__wrapped__", None)) is not None:
            stack.append(w)
        for cell in getattr(f, "__closure__", None) or ():
            try:
                c = cell.cell_contents
            except ValueError:
                continue
            if callable(c) and not isinstance(c, type):
                stack.append(c)
    return "torch (reference implementation)"


def _init_random_(model, std: float = 0.02) -> None:
    """In-place random weights like scripts/bench_model.py: normal·std, RMSNorms at identity (HF's are 1 + w,
    so zeros; the gated one is w, so ones), dt_bias = 1, A = exp(A_log) ~ U(1, 16)."""
    import torch

    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "A_log" in name:
                p.copy_(torch.empty(p.shape, device=p.device, dtype=torch.float32).uniform_(1.0, 16.0,
                                                                                             generator=gen).log())
            elif "dt_bias" in name or "linear_attn.norm" in name:
                p.fill_(1.0)
            elif "norm" in name:
                p.zero_()
            else:
                p.normal_(0.0, std, generator=gen)


def part_hf(args, wd: Path) -> dict:
    import torch
    import transformers

    cap = _Capture()
    logging.getLogger("transformers").addHandler(cap)
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    res: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "device": torch.cuda.get_device_name() if cuda else "cpu"}
    log(f"[hf] transformers {transformers.__version__}, torch {torch.__version__} on {res['device']}")
    try:
        from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig
        from transformers.models.qwen3_5 import modeling_qwen3_5 as mq
    except ImportError as e:
        raise RuntimeError(f"transformers {transformers.__version__} has no Qwen3_5ForCausalLM/Qwen3_5TextConfig "
                           f"(needs the qwen3_5 model, transformers >= 5.x): {e}") from e
    try:
        import fla

        res["fla"] = f"{getattr(fla, '__version__', '?')} ({fla.__file__})"
    except Exception as e:
        res["fla"] = f"not importable: {err(e)}"

    names = {"chunk_gated_delta_rule": "torch_chunk_gated_delta_rule",
             "fused_recurrent_gated_delta_rule": "torch_recurrent_gated_delta_rule",
             "causal_conv1d_fn": "causal_conv1d_fn", "causal_conv1d_update": "causal_conv1d_update"}
    res["bound_kernels"] = {k: (_bound_impl(getattr(mq, v)) if hasattr(mq, v) else f"{v} not found")
                            for k, v in names.items()}
    for k, v in res["bound_kernels"].items():
        log(f"[hf] {k:34s} -> {v}")

    text = dict(SMALL_TEXT if args.small else QWEN36_27B_TEXT)
    text.pop("model_type", None)
    cfg = Qwen3_5TextConfig(**text)
    dtype = torch.bfloat16
    t0 = time.perf_counter()
    with torch.device(dev):
        try:
            model = Qwen3_5ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa")
        except TypeError:  # older spelling
            model = Qwen3_5ForCausalLM._from_config(cfg, torch_dtype=dtype, attn_implementation="sdpa")
    _init_random_(model)
    model.eval()
    if cuda:
        torch.cuda.synchronize()
    res["init_s"] = time.perf_counter() - t0
    res["params"] = sum(p.numel() for p in model.parameters())
    res["param_dtypes"] = sorted({str(p.dtype) for p in model.parameters()})
    res["attn_implementation"] = getattr(model.config, "_attn_implementation", "?")
    res["weights_gb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    log(f"[hf] params {res['params'] / 1e9:.2f} B {res['param_dtypes']} ({res['weights_gb']:.1f} GB) on {dev}, "
        f"attn {res['attn_implementation']}, init {res['init_s']:.1f} s")

    def sync():
        if cuda:
            torch.cuda.synchronize()

    gen = torch.Generator(device="cpu").manual_seed(0)
    vocab = min(cfg.vocab_size, 1000)
    res["prefill"] = []
    for t in args.hf_prefill:
        row: dict[str, Any] = {"tokens": t}
        try:
            ids = torch.randint(0, vocab, (1, t), generator=gen).to(dev)

            def run(ids=ids):
                with torch.inference_mode():
                    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
                sync()
                return out

            t0 = time.perf_counter()
            run()
            row["first_call_s"] = time.perf_counter() - t0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sec, samples = timed(run, reps=args.hf_reps, warmup=1)
            row.update(seconds=sec, ms=sec * 1e3, tok_per_s=t / sec, samples_ms=[s * 1e3 for s in samples])
            if cuda:
                row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            log(f"[hf] prefill {t:6d}: {sec * 1e3:9.1f} ms  {t / sec:9.0f} tok/s  "
                f"(first call {row['first_call_s']:.1f} s)")
        except Exception as e:
            row["error"] = err(e)
            log(f"[hf] prefill {t}: FAILED {row['error']}")
            if cuda:
                torch.cuda.empty_cache()
        res["prefill"].append(row)

    ctx, steps = args.hf_context, args.hf_decode_steps
    row = {"batch": 1, "context": ctx, "steps": steps}
    try:
        with torch.inference_mode():
            ids = torch.randint(0, vocab, (1, ctx), generator=gen).to(dev)
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            row["cache_class"] = type(cache).__name__
            tok = torch.randint(0, vocab, (1, 1), generator=gen).to(dev)
            sync()
            ts = []
            for i in range(steps + 3):  # 3 warm-up steps
                t0 = time.perf_counter()
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                sync()
                if i >= 3:
                    ts.append(time.perf_counter() - t0)
                cache = out.past_key_values
            seq = cache.get_seq_length() if hasattr(cache, "get_seq_length") else None
        sec = statistics.median(ts)
        row.update(ms_per_step=sec * 1e3, tok_per_s=1 / sec, samples_ms=[s * 1e3 for s in ts],
                   final_cache_len=seq, logits_finite=bool(torch.isfinite(out.logits).all()))
        log(f"[hf] decode b=1 ctx={ctx}: {sec * 1e3:8.2f} ms/step  {1 / sec:7.1f} tok/s  (cache {row['cache_class']}, "
            f"length after {seq})")
    except Exception as e:
        row["error"] = err(e)
        log(f"[hf] decode: FAILED {row['error']}")
    res["decode"] = row

    fallbacks = [m for m in cap.messages if FALLBACK_MARK in m]
    res["runtime_fallback_warnings"] = fallbacks
    res["other_warnings"] = [m[:300] for m in cap.messages if FALLBACK_MARK not in m][:20]
    bound = res["bound_kernels"]
    gdn_fla = all(bound[k].startswith("fla") for k in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule"))
    gdn_fallback = any(("chunk_gated_delta_rule" in m or "fused_recurrent_gated_delta_rule" in m) for m in fallbacks)
    res["fla_fast_path_active"] = gdn_fla and not gdn_fallback
    res["causal_conv1d_fast_path_active"] = not bound["causal_conv1d_fn"].startswith("torch")
    log(f"[hf] fla fast path (delta rule) active: {res['fla_fast_path_active']}; causal-conv1d kernel: "
        f"{res['causal_conv1d_fast_path_active']}; fallback warnings: {len(fallbacks)}")
    return res


# ----------------------------------------------------------------------------------------------------------------
# parent: spawn the parts, compare, report

PARTS = {"gdn-jax": part_gdn_jax, "gdn-torch": part_gdn_torch, "hf": part_hf}


def run_part(name: str, args, wd: Path, timeout: float) -> dict:
    timeout = max(20.0, min(timeout, args.deadline - time.perf_counter()))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--workdir", str(wd)] + args.passthrough
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    if name == "gdn-jax":
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(args.jax_mem_fraction)
    else:
        env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")  # should jax get imported, keep it off the GPU
    log(f"=== part {name} (timeout {timeout:.0f} s)")
    t0 = time.perf_counter()
    result_file = wd / f"part_{name}.json"
    try:
        proc = subprocess.run(cmd, env=env, timeout=timeout, cwd=os.getcwd())
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - t0
    if result_file.exists():
        with open(result_file) as f:
            res = json.load(f)
    else:
        res = {"error": f"part {name} wrote no result (exit {rc})"}
    res["wall_s"], res["exit"] = wall, rc
    log(f"=== part {name}: exit {rc}, {wall:.1f} s")
    return res


def child_main(args) -> None:
    wd = Path(args.workdir)
    try:
        res = PARTS[args.part](args, wd)
    except Exception as e:
        traceback.print_exc()
        res = {"error": err(e)}
    write_json(wd / f"part_{args.part}.json", res)


def compare(wd: Path, lengths: list[int]) -> list[dict]:
    rows = []
    for t in lengths:
        ours = sorted({p.name.split("_o_")[0][4:] for p in wd.glob(f"out_ours*_o_{t}.npy")})
        have = {n: (wd / f"out_{n}_o_{t}.npy").exists() for n in ("fla", "fla-gva", "ref", *ours)}
        pairs = [*((o, "fla") for o in ours), ("fla-gva", "fla"), *((o, "ref") for o in ours), ("fla", "ref")]
        for a, b in pairs:
            if not (have[a] and have[b]):
                continue
            row = {"T": t, "a": a, "b": b}
            for what in ("o", "s"):
                x, y = np.load(wd / f"out_{a}_{what}_{t}.npy"), np.load(wd / f"out_{b}_{what}_{t}.npy")
                row["output" if what == "o" else "final_state"] = diff_stats(x, y)
            rows.append(row)
            o, s = row["output"], row["final_state"]
            log(f"check T={t:6d} {a:>28s} vs {b:<4s}: output max|diff| {o['max_abs_diff']:.3e} (max|ref| "
                f"{o['max_abs_ref']:.2f}, rel RMS {o['rel_rms']:.2e}); state max|diff| {s['max_abs_diff']:.3e} "
                f"(max|ref| {s['max_abs_ref']:.2f}, rel RMS {s['rel_rms']:.2e})")
    return rows


def print_table(res: dict) -> None:
    gj, gt, hf = res.get("gdn_jax", {}), res.get("gdn_torch", {}), res.get("hf", {})
    seen = {k: v for k, v in (("device", gt.get("device") or hf.get("device") or gj.get("device")),
                              ("jax", gj.get("jax")), ("torch", gt.get("torch") or hf.get("torch")),
                              ("fla", gt.get("fla") or hf.get("fla")), ("triton", gt.get("triton")),
                              ("transformers", hf.get("transformers"))) if v}
    log("\n" + ", ".join(f"{k} {v}" for k, v in seen.items()))
    log("\n| measure | ours (JAX) | anchor (torch) |\n|---|---|---|")
    nl = res["gdn_layers"]
    for t in res["gdn_lengths"] if (gj or gt) else []:
        ours = next((r for r in gj.get("rows", []) if r.get("T") == t and r.get("impl") == "ours"), None)
        cells = []
        for r in [ours] + [next((r for r in gt.get("rows", []) if r.get("T") == t and r.get("impl") == n), None)
                           for n in ("fla", "fla-gva")]:
            if r is None:
                cells.append("-")
            elif "error" in r:
                cells.append(r["error"][:50])
            else:
                cells.append(f"{r['ms']:.2f} ms, {r['tok_per_s'] / 1e3:.0f}k tok/s (x{nl}: {r['ms'] * nl:.0f} ms)")
        fla_cell = cells[1] if cells[2] == "-" else f"fla {cells[1]}; gva {cells[2]}"
        if gt.get("fla_skipped"):
            fla_cell = gt["fla_skipped"][:60]
        log(f"| GDN chunked prefill T={t} | {cells[0]} | {fla_cell} |")
        for r in gj.get("rows", []):
            if r.get("T") == t and r.get("impl", "ours") != "ours":
                cell = r["error"][:50] if "error" in r else f"{r['ms']:.2f} ms, {r['tok_per_s'] / 1e3:.0f}k tok/s"
                log(f"| GDN T={t}, ours with {r['variant']} | {cell} | |")
    for c in res.get("gdn_check", []):
        log(f"| check T={c['T']} {c['a']} vs {c['b']} | output max abs {c['output']['max_abs_diff']:.2e} "
            f"(rel RMS {c['output']['rel_rms']:.1e}) | state max abs {c['final_state']['max_abs_diff']:.2e} "
            f"(rel RMS {c['final_state']['rel_rms']:.1e}) |")
    if hf:
        if "error" in hf and "prefill" not in hf:
            log(f"| HF transformers | - | {hf['error'][:80]} |")
        else:
            log(f"| HF fast path (fla) active | - | {hf.get('fla_fast_path_active')} "
                f"(causal-conv1d kernel: {hf.get('causal_conv1d_fast_path_active')}) |")
            for r in hf.get("prefill", []):
                cell = r["error"][:60] if "error" in r else f"{r['ms']:.1f} ms, {r['tok_per_s']:.0f} tok/s"
                log(f"| HF prefill {r['tokens']} tok (b=1) | see bench_model.py | {cell} |")
            d = hf.get("decode", {})
            if d:
                cell = (d["error"][:60] if "error" in d
                        else f"{d['ms_per_step']:.2f} ms/step, {d['tok_per_s']:.1f} tok/s")
                log(f"| HF decode b=1 @ {d.get('context')} | see bench_model.py | {cell} |")


def parse_ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="CPU smoke run: tiny shapes and a tiny HF config")
    ap.add_argument("--parts", default="gdn,hf", help="comma list of: gdn (both kernels), gdn-jax (ours only), hf")
    ap.add_argument("--gdn-lengths", default=None, help="default 2048,8192,32768 (small: 64,200)")
    ap.add_argument("--reps", type=int, default=None, help="GDN timing reps (default 10, small 3)")
    ap.add_argument("--jax-chunk", type=int, default=64)
    ap.add_argument("--jax-variants", default="default",
                    help=f"comma list of our GDN settings to time, of: {', '.join(GDN_VARIANTS)}")
    ap.add_argument("--jax-mem-fraction", type=float, default=0.6)
    ap.add_argument("--h0-scale", type=float, default=0.0, help="initial GDN state scale (0: none, as in prefill)")
    ap.add_argument("--ref-max-t", type=int, default=2048, help="fp32 torch reference at the shortest T <= this")
    ap.add_argument("--hf-prefill", default=None, help="default 512,2048,8192 (small: 32,128)")
    ap.add_argument("--hf-context", type=int, default=None, help="decode context, default 2048 (small: 64)")
    ap.add_argument("--hf-decode-steps", type=int, default=None, help="default 16 (small: 4)")
    ap.add_argument("--hf-reps", type=int, default=None, help="prefill reps (default 3)")
    ap.add_argument("--timeout-gdn", type=float, default=180.0, help="seconds per GDN part")
    ap.add_argument("--timeout-hf", type=float, default=330.0)
    ap.add_argument("--budget", type=float, default=570.0,
                    help="seconds for the whole run; part timeouts are cut to what is left")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir of inputs/outputs")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args()

    small = args.small
    args.gdn_shapes = GDN_SMALL if small else GDN_27B
    args.gdn_lengths = parse_ints(args.gdn_lengths or ("64,200" if small else "2048,8192,32768"))
    args.reps = args.reps or (3 if small else 10)
    args.jax_variants = [v.strip() for v in args.jax_variants.split(",") if v.strip()]
    unknown = [v for v in args.jax_variants if v not in GDN_VARIANTS]
    if unknown:
        ap.error(f"--jax-variants: unknown {unknown} (known: {', '.join(GDN_VARIANTS)})")
    args.hf_prefill = parse_ints(args.hf_prefill or ("32,128" if small else "512,2048,8192"))
    args.hf_context = args.hf_context or (64 if small else 2048)
    args.hf_decode_steps = args.hf_decode_steps or (4 if small else 16)
    args.hf_reps = args.hf_reps or 3
    if args.part:
        child_main(args)
        return

    # everything the children need, as they see it (they re-derive the defaults above the same way)
    args.passthrough = [a for a in sys.argv[1:]]
    if "--out" in args.passthrough:
        i = args.passthrough.index("--out")
        del args.passthrough[i:i + 2]
    args.passthrough = [a for a in args.passthrough if not a.startswith("--out=")]

    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    wd = Path(tempfile.mkdtemp(prefix="bench_anchor_"))
    text = SMALL_TEXT if small else QWEN36_27B_TEXT
    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "small" if small else "qwen3.6-27b",
                           "python": sys.version.split()[0], "gdn_shapes": args.gdn_shapes,
                           "gdn_lengths": args.gdn_lengths, "workdir": str(wd),
                           "gdn_layers": text["layer_types"].count("linear_attention")}
    t_start = time.perf_counter()
    args.deadline = t_start + args.budget

    def save():
        res["total_s"] = time.perf_counter() - t_start
        if args.out:
            write_json(args.out, res)

    try:
        if "gdn" in parts or "gdn-jax" in parts:
            t0 = time.perf_counter()
            res["gdn_inputs"] = make_gdn_inputs(wd, max(args.gdn_lengths), args.gdn_shapes, args.seed, args.h0_scale)
            log(f"GDN inputs {args.gdn_shapes} up to T={max(args.gdn_lengths)} written in "
                f"{time.perf_counter() - t0:.1f} s (g min {res['gdn_inputs']['g_min']:.1f}, "
                f"mean {res['gdn_inputs']['g_mean']:.2f})")
            if "gdn" in parts:  # "gdn-jax" alone: our variants only (launch tuning), no torch / fla
                res["gdn_torch"] = run_part("gdn-torch", args, wd, args.timeout_gdn)
                save()
            res["gdn_jax"] = run_part("gdn-jax", args, wd, args.timeout_gdn)
            save()
            res["gdn_check"] = compare(wd, args.gdn_lengths)
            save()
            for p in wd.glob("*.npy"):  # free the disk before the big model
                p.unlink()
        if "hf" in parts:
            res["hf"] = run_part("hf", args, wd, args.timeout_hf)
            save()
    finally:
        save()
        if not args.keep:
            shutil.rmtree(wd, ignore_errors=True)
    print_table(res)
    log(f"total {res['total_s']:.1f} s" + (f"; JSON in {args.out}" if args.out else ""))


if __name__ == "__main__":
    main()
