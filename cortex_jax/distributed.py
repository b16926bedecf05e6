"""Multi-process (multi-host) JAX: start the runtime and build one mesh over every process's devices.

JAX's multi-controller model: every process runs the *same* program; ``jax.devices()`` lists the devices of
all processes, ``jax.local_devices()`` this process's. A ``jax.Array`` on a global mesh holds only this
process's shards (``addressable_shards``); the checkpoint loader's ``make_array_from_callback`` therefore
reads only the slices this process's devices hold, so no host ever holds the whole model.

Usage (every process, before any other JAX call)::

    from cortex_jax import distributed
    distributed.initialize("10.0.0.1:6123", num_processes=2, process_id=rank)
    mesh = distributed.global_mesh(dp=1, tp=16)       # tp groups stay inside a host where they fit
    graphdef, state, cfg = load_model(ckpt, mesh=mesh)
    logits = distributed.to_host(logits)              # numpy copy of a global array, on every process

On CPU the cross-process collectives go through gloo (``jax_cpu_collectives_implementation``); this is what
the two-process CI test uses. On GPU, NCCL is used automatically.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh

from cortex_jax.mesh import make_mesh

log = logging.getLogger(__name__)

ENV_COORDINATOR = "CORTEX_COORDINATOR"
ENV_NUM_PROCESSES = "CORTEX_NUM_PROCESSES"
ENV_PROCESS_ID = "CORTEX_PROCESS_ID"


@dataclass(frozen=True)
class ProcessInfo:
    process_id: int
    num_processes: int
    local_devices: int
    global_devices: int


def initialize(
    coordinator: str,
    num_processes: int,
    process_id: int,
    local_device_ids: Sequence[int] | None = None,
    *,
    cpu_collectives: str = "gloo",
    initialization_timeout_s: int = 300,
) -> ProcessInfo:
    """Join the multi-process JAX runtime (``jax.distributed.initialize``); call once, before other JAX use.

    ``coordinator``: ``host:port`` of process 0's coordination service (every process passes the same value).
    ``local_device_ids``: restrict this process to some local accelerators (e.g. one process per GPU).
    ``cpu_collectives``: cross-process collectives for the CPU backend (``"gloo"``; ``"mpi"`` needs an MPI
    build). Ignored by GPU/TPU backends. A single process (``num_processes == 1``) is a no-op.
    """
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise ValueError(f"bad process_id {process_id} for num_processes {num_processes}")
    if num_processes > 1:
        # Without this the CPU client has no cross-process collectives and the first sharded op over a
        # multi-process mesh fails; it must be set before the backend initialises.
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=None if local_device_ids is None else list(local_device_ids),
            initialization_timeout=initialization_timeout_s,
        )
    info = ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )
    log.info("jax runtime: %s", info)
    return info


def initialize_from_env() -> ProcessInfo | None:
    """:func:`initialize` from ``CORTEX_COORDINATOR`` / ``CORTEX_NUM_PROCESSES`` / ``CORTEX_PROCESS_ID``;
    ``None`` (single process, nothing done) when ``CORTEX_COORDINATOR`` is unset."""
    coordinator = os.environ.get(ENV_COORDINATOR)
    if not coordinator:
        return None
    return initialize(coordinator, int(os.environ[ENV_NUM_PROCESSES]), int(os.environ[ENV_PROCESS_ID]))


def global_devices() -> list[jax.Device]:
    """Every device of every process, ordered by (process, local id) identically on all processes."""
    return sorted(jax.devices(), key=lambda d: (d.process_index, d.id))


def global_mesh(dp: int, tp: int) -> Mesh:
    """A ``dp × tp`` mesh over all processes' devices.

    Devices are laid out process-major, so a tp group (one row of the mesh) stays inside one process whenever
    ``tp`` divides the local device count: the per-layer all-reduces then run over the fast local links and
    only dp (independent batch rows) crosses hosts. A larger ``tp`` spans hosts, which is correct but slow.
    """
    devs = global_devices()
    if dp * tp != len(devs):
        raise ValueError(
            f"mesh dp={dp} × tp={tp} must cover all {len(devs)} devices of {jax.process_count()} processes"
        )
    return make_mesh(dp, tp, devices=devs)


def to_host(x: jax.Array) -> np.ndarray:
    """The full value of a (possibly multi-process) global array as numpy, on every process.

    Fully addressable arrays are copied directly; otherwise the shards are exchanged with
    ``multihost_utils.process_allgather`` (a collective: every process must call it).
    """
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
