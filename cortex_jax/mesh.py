"""Device mesh construction with named axes ``("dp", "tp")``.

Axis types are set to ``Auto`` on purpose: newer ``jax.make_mesh`` defaults to ``Explicit`` axes
(sharding-in-types), under which every op must be told its output sharding. The engine instead places arrays
with explicit ``NamedSharding``s (params, cache) and lets GSPMD propagate the rest inside ``jit``: ``Auto``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

DP = "dp"  # data parallel: batch rows / cache slots
TP = "tp"  # tensor parallel: heads, FFN columns, vocab
AXES = (DP, TP)


def make_mesh(dp: int = 1, tp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``dp × tp`` mesh over ``devices`` (default: the first ``dp·tp`` of ``jax.devices()``)."""
    if dp < 1 or tp < 1:
        raise ValueError(f"mesh sizes must be >= 1, got dp={dp} tp={tp}")
    n = dp * tp
    devs = list(jax.devices() if devices is None else devices)
    if len(devs) < n:
        raise ValueError(f"mesh dp={dp} × tp={tp} needs {n} devices, only {len(devs)} available")
    types = (AxisType.Auto, AxisType.Auto)
    if devices is None and n == len(devs):
        # let JAX pick a topology-aware device order when the mesh covers every device
        return jax.make_mesh((dp, tp), AXES, axis_types=types)
    return Mesh(np.asarray(devs[:n]).reshape(dp, tp), AXES, axis_types=types)
