"""What this host can run on: JAX devices, their memory, library versions and the meshes they can form."""

from __future__ import annotations

import platform
from typing import Any

import jax

from serving.memory import host_memory_available


def devices() -> list[dict[str, Any]]:
    """One entry per local device; memory figures where the backend reports them (GPU/TPU), else host RAM."""
    out = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 - some backends raise instead of returning None
            stats = {}
        total = stats.get("bytes_limit")
        used = stats.get("bytes_in_use")
        out.append(
            {
                "id": int(d.id),
                "platform": d.platform,
                "kind": getattr(d, "device_kind", d.platform),
                "process_index": int(getattr(d, "process_index", 0)),
                "memory_total_bytes": int(total) if total is not None else None,
                "memory_used_bytes": int(used) if used is not None else None,
                "memory_free_bytes": int(total - used) if total is not None and used is not None else None,
                "memory_peak_bytes": int(stats["peak_bytes_in_use"])
                if "peak_bytes_in_use" in stats
                else None,
            }
        )
    return out


def device_memory_total() -> int | None:
    """Sum of the device memory limits, or None where the backend reports none (CPU)."""
    totals = [d["memory_total_bytes"] for d in devices()]
    if not totals or any(t is None for t in totals):
        return None
    return int(sum(totals))


def default_budget_bytes() -> int:
    """What models may use when no ``memory_budget_gb`` is set: the devices' total, else 80% of free host RAM."""
    total = device_memory_total()
    if total is not None:
        return int(total * 0.92)  # leave room for XLA workspaces and fragmentation
    host = host_memory_available()
    return int(host * 0.8) if host else 8 * 1024**3


def mesh_shapes(n: int) -> list[dict[str, int]]:
    """Every (dp, tp) with dp·tp == n local devices, plus smaller tensor-parallel groups that divide n."""
    shapes = []
    for tp in range(1, n + 1):
        if n % tp == 0:
            shapes.append({"dp": n // tp, "tp": tp})
    return shapes


def discovery(settings_tp: int) -> dict[str, Any]:
    import flax

    devs = devices()
    return {
        "platform": jax.default_backend(),
        "device_count": len(devs),
        "process_count": jax.process_count(),
        "devices": devs,
        "versions": {
            "jax": jax.__version__,
            "jaxlib": getattr(jax.lib, "__version__", None) or _jaxlib_version(),
            "flax": flax.__version__,
            "python": platform.python_version(),
        },
        "mesh_shapes": mesh_shapes(len(devs)),
        "default_tensor_parallel": settings_tp,
        "host": {
            "machine": platform.machine(),
            "system": platform.system(),
            "memory_available_bytes": host_memory_available(),
        },
    }


def _jaxlib_version() -> str | None:
    try:
        import jaxlib

        return jaxlib.__version__
    except (ImportError, AttributeError):
        return None
