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
    """Every (dp, tp) with dp·tp ≤ n local devices (a model's mesh takes the first dp·tp of them); which of
    them fit a given model is under ``models`` in :func:`discovery`."""
    return [{"dp": dp, "tp": tp} for tp in range(1, n + 1) for dp in range(1, n // tp + 1)]


def model_meshes(registry: Any, settings: Any, devs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per servable model: the (dp, tp) meshes its head counts and the slot count allow on this host, each
    with an estimate of the bytes one device holds and whether that fits the devices' memory (``None`` where
    the backend reports no per-device memory, e.g. CPU: host RAM is shared, see ``memory_source``)."""
    from models.qwen36.config import Qwen36Config
    from serving.engine_factory import VISION_PREFIXES, VISION_WIRED
    from serving.memory import weight_table
    from serving.parallel import per_device_bytes, valid_meshes

    loader, n = registry.loader, len(devs)
    dtype = loader.dtype()
    out: dict[str, Any] = {}
    for mid, entry in list(registry.entries.items()):
        try:
            path = loader.resolve(entry.source)
            cfg = Qwen36Config.from_dir(path)
            skip = () if VISION_WIRED and cfg.vision is not None else VISION_PREFIXES
            table = weight_table(path, dtype, skip)
        except Exception as e:  # noqa: BLE001 - a broken checkpoint is reported, not fatal
            out[mid] = {"error": f"{type(e).__name__}: {e}"}
            continue
        context = min(settings.context_limit, cfg.text.max_position_embeddings)
        meshes = []
        for spec in valid_meshes(cfg.text, n, settings.slots):
            need = per_device_bytes(table, cfg, spec, settings.slots, context, dtype)
            limits = [d["memory_total_bytes"] for d in devs[: spec.size]]
            have = None if any(x is None for x in limits) else int(min(limits) * 0.92)
            meshes.append({"dp": spec.dp, "tp": spec.tp, "devices": [d["id"] for d in devs[: spec.size]],
                           "per_device_bytes": need, "device_budget_bytes": have,
                           "fits": None if have is None else need["total_bytes"] <= have})
        default = settings.mesh_for(mid)
        out[mid] = {"dtype": dtype, "slots": settings.slots, "context_length": context,
                    "heads": {"attention": cfg.text.num_attention_heads, "kv": cfg.text.num_key_value_heads,
                              "gdn_key": cfg.text.linear_num_key_heads},
                    "default_mesh": {"dp": default.dp, "tp": default.tp}, "meshes": meshes}
    return out


def discovery(settings: Any, registry: Any = None) -> dict[str, Any]:
    import flax

    devs = devices()
    per_device = all(d["memory_total_bytes"] is not None for d in devs)
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
        "default_tensor_parallel": settings.tensor_parallel,
        "default_data_parallel": settings.data_parallel,
        "memory_source": "device" if per_device else "unknown (host memory shared by all devices)",
        "models": model_meshes(registry, settings, devs) if registry is not None else {},
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
