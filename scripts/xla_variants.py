"""A/B runs of a benchmark script under several ``XLA_FLAGS`` settings, each in its own child process.

XLA reads ``XLA_FLAGS`` once, when the backend starts, so comparing flags inside one process is impossible: the
parent (which must not start a JAX backend itself, or it would hold the GPUs' memory) re-runs the same script
once per variant with the variant's flags added, collects each child's JSON and reports a failed child (an
unknown flag aborts XLA at start-up: ``Unknown flag in XLA_FLAGS: ...``) as a row instead of crashing.

Variant syntax (``--xla-variants``): variants separated by ``;``, tokens inside one by spaces.

* ``default`` (or an empty variant): the inherited environment as is;
* ``--xla_...[=value]``: an XLA flag, appended to the inherited ``XLA_FLAGS`` (replacing a flag of the same
  name there);
* ``NAME=value``: an environment variable for the child (e.g. ``NCCL_PROTO=LL``). The NVLink-multicast guards
  of the shared GPU hosts (:data:`PROTECTED_ENV`) cannot be changed, and XLA flags that mention multimem or
  NVSHMEM are refused: programs that use NVLink multicast can take the host's GPUs out of service.

``flag_known(name)`` says whether the installed jaxlib / CUDA plugin binaries contain a flag's name (a string
search of the shared libraries that parse ``XLA_FLAGS``; ``None`` when none is found): a hint printed before
the child runs, the child's exit status being the authority.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import mmap
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROTECTED_ENV = ("NCCL_NVLS_ENABLE", "NVSHMEM_DISABLE_NVLS", "TORCH_SYMM_MEM_DISABLE_MULTICAST")
_REFUSED_FLAG = re.compile(r"multimem|nvshmem|multicast", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Variant:
    label: str
    xla_flags: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


def parse_variants(spec: str) -> list[Variant]:
    """``"default;--xla_a=1 --xla_b=;NCCL_PROTO=LL"`` -> three variants (see the module docstring)."""
    out = []
    for raw in spec.split(";"):
        tokens = raw.split()
        flags, env = [], []
        for tok in tokens:
            if tok == "default":
                continue
            if tok.startswith("--"):
                if _REFUSED_FLAG.search(tok):
                    raise ValueError(f"refused XLA flag {tok!r}: NVLink multicast / NVSHMEM stay off on shared hosts")
                flags.append(tok)
            elif "=" in tok and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", tok.split("=", 1)[0]):
                name, value = tok.split("=", 1)
                if name in PROTECTED_ENV:
                    raise ValueError(f"refused {name}: the NVLink multicast guards stay as the host set them")
                env.append((name, value))
            else:
                raise ValueError(f"variant token {tok!r}: expected 'default', --xla_flag[=v] or NAME=value")
        label = " ".join(tokens) or "default"
        out.append(Variant(label, tuple(flags), tuple(env)))
    if not out:
        raise ValueError("no variants")
    return out


def _flag_name(flag: str) -> str:
    return flag.lstrip("-").split("=", 1)[0]


def merge_xla_flags(base: str, extra: tuple[str, ...] | list[str]) -> str:
    """``base`` with ``extra`` appended; a base flag of the same name as an extra one is dropped."""
    names = {_flag_name(f) for f in extra}
    kept = [f for f in base.split() if _flag_name(f) not in names]
    return " ".join([*kept, *extra])


def fake_cpu_devices(n: int) -> None:
    """Make JAX, not yet imported, run on ``n`` fake CPU devices: the host device count in ``XLA_FLAGS`` (one
    already there is replaced) and ``JAX_PLATFORMS=cpu``. For the scripts' CPU smoke runs of mesh code."""
    os.environ["XLA_FLAGS"] = merge_xla_flags(os.environ.get("XLA_FLAGS", ""),
                                              [f"--xla_force_host_platform_device_count={int(n)}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def child_env(variant: Variant, base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    env["XLA_FLAGS"] = merge_xla_flags(env.get("XLA_FLAGS", ""), variant.xla_flags)
    env.update(dict(variant.env))
    return env


def _flag_libraries() -> list[Path]:
    """Shared libraries of jaxlib and the JAX GPU plugins (found without importing them)."""
    libs: list[Path] = []
    for pkg in ("jaxlib", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_plugins", "jax_rocm60_plugin",
                "jax_rocm7_plugin"):
        try:
            spec = importlib.util.find_spec(pkg)
        except (ImportError, ValueError):
            continue
        for loc in (spec.submodule_search_locations or []) if spec else []:
            libs += sorted(p for p in Path(loc).rglob("*.so*") if p.is_file())
    return libs


def flag_known(name: str) -> bool | None:
    """Whether every installed library that parses ``XLA_FLAGS`` contains ``name`` (``--`` and ``=value``
    ignored). ``None``: no such library found (e.g. no jaxlib)."""
    needle = _flag_name(name).encode()
    seen = False
    for lib in _flag_libraries():
        try:
            with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(b"xla_dump_to") < 0:  # every library with the flag table has this one
                    continue
                seen = True
                if m.find(needle) < 0:
                    return False
        except (OSError, ValueError):
            continue
    return True if seen else None


def unknown_flags(variant: Variant) -> list[str]:
    return [f for f in variant.xla_flags if flag_known(f) is False]


def strip_option(argv: list[str], name: str, has_value: bool = True) -> list[str]:
    """``argv`` without ``name`` (``--name value`` or ``--name=value`` forms)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == name:
            skip = has_value
            continue
        if a.startswith(name + "="):
            continue
        out.append(a)
    return out


def safe_name(i: int, label: str) -> str:
    """A file-name-safe folder name for variant ``i`` (letters, digits, '.', '_' and '-' only)."""
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", label.replace("--xla_", "").replace("xla_gpu_", "")).strip("_.")
    return f"v{i}_{s[:48] or 'default'}"


def failure_reason(log: str) -> str:
    """The most telling line of a failed child's output."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for pat in (r"Unknown flag", r"RESOURCE_EXHAUSTED|out of memory", r"\w+Error:|\w+Exception:", r"^F\d{4} ",
                r"error", r"Traceback"):
        hits = [ln for ln in lines if re.search(pat, ln, re.IGNORECASE)]
        if hits:
            return hits[-1][:300]
    return lines[-1][:300] if lines else "(no output)"


def run_child(cmd: list[str], env: dict[str, str], log_path: Path, timeout: float, cwd: Path | None = None) -> dict:
    """Run ``cmd`` with stdout + stderr to ``log_path``; returns rc, seconds and (on failure) a reason."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    res = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "log": str(log_path)}
    if rc != 0:
        text = log_path.read_text(errors="replace")
        res["error"] = f"timed out after {timeout:.0f} s" if rc == 124 else failure_reason(text)
    return res


def run_variants(script: Path, argv: list[str], spec: str, out: Path, timeout: float, keys: tuple[str, ...],
                 extra_args=lambda variant: [], on_update=None) -> list[dict]:
    """Re-run ``script`` once per variant of ``spec``: the same ``argv`` minus ``--xla-variants`` / ``--out``,
    each child writing into ``out/<i>_<label>/``. After each child its record (label, flags, rc, seconds, error,
    and ``keys`` copied from the child's ``results.json``: written incrementally, so a timed-out child keeps
    what it finished) is appended and ``on_update(records)`` called. Returns the records."""
    variants = parse_variants(spec)
    base = strip_option(strip_option(argv, "--xla-variants"), "--out")
    out.mkdir(parents=True, exist_ok=True)
    done: list[dict] = []
    for i, v in enumerate(variants):
        sub = out / safe_name(i, v.label)
        sub.mkdir(parents=True, exist_ok=True)
        unknown = unknown_flags(v)
        if unknown:
            print(f"[{v.label}] not in the installed jaxlib (the child will tell): {unknown}", flush=True)
        env = child_env(v)
        print(f"[{v.label}] XLA_FLAGS={env['XLA_FLAGS']!r} ...", flush=True)
        cmd = [sys.executable, str(script), *base, "--out", str(sub), *extra_args(v)]
        res = run_child(cmd, env, out / f"{sub.name}.log", timeout, cwd=script.resolve().parents[1])
        rec: dict = {"label": v.label, "xla_flags": env["XLA_FLAGS"], **res}
        if unknown:
            rec["unknown_flags"] = unknown
        if (sub / "results.json").is_file():
            got = json.loads((sub / "results.json").read_text())
            rec.update({k: got[k] for k in keys if k in got})
        print(f"[{v.label}] rc {res['rc']} in {res['seconds']} s" + (f": {res['error']}" if "error" in res else ""),
              flush=True)
        done.append(rec)
        if on_update is not None:
            on_update(done)
    return done
