"""Model lifecycle: available → loading → loaded → unloading → available (or failed), with memory accounting.

One ``asyncio.Lock`` guards state transitions, never the (threaded) load itself. Concurrent loads of one model
share one task; waiters are shielded, so a client that goes away does not cancel a load others wait for. A load
is ``loading`` from its first step (preparing: config, safetensors headers, memory estimate), so requests
arriving meanwhile join it; a failed prepare puts the entry back. Memory for a load is reserved from the budget
(computed before any device memory is touched) when preparing ends and returned when the load fails or the model
is unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from serving.catalogue import ModelSource, scan
from serving.errors import ApiError, bad_request, model_not_found
from serving.parallel import MeshError, MeshSpec, check_host
from serving.settings import Settings

if TYPE_CHECKING:
    from serving.model_host import LoadedModel, ModelLoader

log = logging.getLogger("serving.registry")
GiB = 1024**3


class ModelState(enum.StrEnum):
    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"
    FAILED = "failed"


@dataclass
class ModelEntry:
    source: ModelSource
    state: ModelState = ModelState.AVAILABLE
    reason: str | None = None
    progress: float = 0.0
    stage: str = ""
    tensor_parallel: int | None = None
    data_parallel: int | None = None
    memory_needed: int | None = None
    reserved: int = 0
    model: LoadedModel | None = None
    task: asyncio.Task | None = None
    last_used: float | None = None
    load_seconds: float | None = None
    in_flight: int = 0
    meta: dict[str, Any] = field(default_factory=dict)  # context length, capabilities known before load

    @property
    def id(self) -> str:
        return self.source.id


class Lease:
    """One request's hold on a loaded model; ``release()`` exactly once (idempotent)."""

    def __init__(self, entry: ModelEntry):
        self.entry = entry
        self.model: LoadedModel = entry.model  # type: ignore[assignment]
        self._held = True
        entry.in_flight += 1
        entry.last_used = time.time()

    def release(self) -> None:
        if self._held:
            self._held = False
            self.entry.in_flight -= 1
            self.entry.last_used = time.time()


class Registry:
    def __init__(self, settings: Settings, loader: ModelLoader, budget_bytes: int, metrics: Any = None):
        self.settings = settings
        self.loader = loader
        self.budget_bytes = budget_bytes
        self.metrics = metrics
        self.draining = False
        # models the start-up task is about to load: a request arriving first joins that load instead of a 503
        self.starting: set[str] = set()
        self._lock = asyncio.Lock()
        self.entries: dict[str, ModelEntry] = {mid: ModelEntry(src) for mid, src in scan(settings).items()}

    # ---- lookups ------------------------------------------------------------------------------------
    def entry(self, model_id: str) -> ModelEntry:
        if model_id not in self.entries:  # a checkpoint dropped into models_dir after start
            for mid, src in scan(self.settings).items():
                self.entries.setdefault(mid, ModelEntry(src))
        if model_id not in self.entries:
            raise model_not_found(model_id)
        return self.entries[model_id]

    @property
    def reserved_bytes(self) -> int:
        return sum(e.reserved for e in self.entries.values())

    def loaded(self) -> list[ModelEntry]:
        return [e for e in self.entries.values() if e.state is ModelState.LOADED]

    # ---- load -----------------------------------------------------------------------------------------
    async def _settled(self, entry: ModelEntry, busy: ModelState) -> None:
        """Hold the lock with ``entry`` not in state ``busy``: its running task is awaited *outside* the lock."""
        while True:
            await self._lock.acquire()
            task = entry.task if entry.state is busy else None
            if task is None:
                return  # caller releases the lock
            self._lock.release()
            await asyncio.shield(task)

    async def load(self, model_id: str, tensor_parallel: int | None = None, wait: bool = True,
                   data_parallel: int | None = None) -> ModelEntry:
        """Load ``model_id`` on a dp × tp mesh: the request's sizes, else the model's ``parallel`` setting, else
        the defaults (a request giving only one size takes the other from the setting)."""
        entry = self.entry(model_id)
        if self.draining:
            raise ApiError(503, "The neuron is shutting down", "shutting_down")
        await self._settled(entry, ModelState.UNLOADING)  # an unload in progress finishes first
        try:
            if entry.state in (ModelState.LOADED, ModelState.LOADING):
                for name, want, have in (("tensor_parallel", tensor_parallel, entry.tensor_parallel),
                                         ("data_parallel", data_parallel, entry.data_parallel)):
                    if want is not None and want != have:
                        raise ApiError(409, f"'{model_id}' is {entry.state} with {name}={have}; unload it "
                                       f"first to change it", "tp_conflict" if name[0] == "t" else "dp_conflict",
                                       name)
                if entry.state is ModelState.LOADED:
                    return entry
            else:
                default = self.settings.mesh_for(model_id)
                await self._start_load(entry, MeshSpec(data_parallel or default.dp, tensor_parallel or default.tp))
        finally:
            self._lock.release()
        task = entry.task
        if wait and task is not None and entry.state is ModelState.LOADING:
            await asyncio.shield(task)
            if entry.state is ModelState.FAILED:
                raise ApiError(500, f"Loading '{model_id}' failed: {entry.reason}", "model_load_failed")
        return entry

    async def _start_load(self, entry: ModelEntry, mesh: MeshSpec) -> None:
        """Prepare and start a load; the caller holds the lock. The entry is LOADING, with the load task to wait
        on, *before* the checkpoint is prepared (config, safetensors headers, memory estimate), so a request
        arriving meanwhile joins the load. A failed prepare puts the entry back (a bad checkpoint: ``failed``)
        before that task ends, so nobody waits on a LOADING entry with no load behind it."""
        before = (entry.state, entry.reason, entry.progress, entry.stage, entry.tensor_parallel, entry.data_parallel)
        entry.state, entry.reason, entry.progress, entry.stage = ModelState.LOADING, None, 0.0, "preparing"
        entry.tensor_parallel, entry.data_parallel = mesh.tp, mesh.dp
        prepared: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry.task = asyncio.create_task(self._run_load(entry, mesh, prepared), name=f"load:{entry.id}")
        try:
            check_host(mesh, self.loader.device_count(), self.settings.slots)
            path, meta, est = await asyncio.to_thread(self.loader.prepare, entry.source, mesh.tp, mesh.dp)
            entry.meta.update(meta)
            entry.memory_needed = est.total_bytes
            self._reserve(entry, est)
        except BaseException as e:  # also a cancelled caller: the load does not start
            (entry.state, entry.reason, entry.progress, entry.stage, entry.tensor_parallel,
             entry.data_parallel) = before
            prepared.set_result(None)
            if isinstance(e, MeshError):  # 400: no such mesh on this host, or the model's heads do not fit tp
                raise bad_request(f"Cannot load '{entry.id}': {e}", e.param, "invalid_mesh") from None
            if isinstance(e, Exception) and not isinstance(e, ApiError):  # a bad checkpoint: the model's state
                self._fail(entry, e)
                raise ApiError(500, f"Loading '{entry.id}' failed: {entry.reason}", "model_load_failed") from e
            raise
        entry.stage = "starting"
        prepared.set_result(path)

    def _reserve(self, entry: ModelEntry, est: Any) -> None:
        """Reserve the load's memory, or 507 when the budget's free part cannot hold it (no await: atomic)."""
        free = self.budget_bytes - self.reserved_bytes
        if est.total_bytes > free:
            loaded = ", ".join(
                f"{e.id} ({e.reserved / GiB:.2f} GiB)" for e in self.entries.values() if e.reserved
            )
            raise ApiError(
                507,
                f"'{entry.id}' needs {est.total_bytes / GiB:.3f} GiB (weights "
                f"{est.params_bytes / GiB:.3f} + cache {est.cache_bytes / GiB:.3f}) but only "
                f"{max(free, 0) / GiB:.3f} GiB of the {self.budget_bytes / GiB:.3f} GiB budget is "
                f"free; in use: {loaded or 'nothing'}",
                "insufficient_memory",
                "model",
            )
        entry.reserved = est.total_bytes

    async def _run_load(self, entry: ModelEntry, mesh: MeshSpec, prepared: asyncio.Future[Any]) -> None:
        path = await prepared
        if path is None:
            return  # preparing failed: ``_start_load`` has put the entry back already
        t0 = time.monotonic()
        log.info("loading model", extra={"model": entry.id, "path": str(path), "tp": mesh.tp, "dp": mesh.dp})

        def progress(fraction: float, stage: str) -> None:
            entry.progress, entry.stage = max(entry.progress, min(fraction, 1.0)), stage

        try:
            model = await asyncio.to_thread(self.loader.load, entry.id, path, mesh.tp, progress, mesh.dp)
        except Exception as e:  # noqa: BLE001
            self._fail(entry, e)
            return
        entry.model, entry.state, entry.progress, entry.stage = model, ModelState.LOADED, 1.0, "loaded"
        entry.load_seconds = time.monotonic() - t0
        entry.last_used = time.time()
        entry.reserved = max(entry.reserved, model.memory_used_bytes)
        log.info("model loaded", extra={"model": entry.id, "seconds": round(entry.load_seconds, 3)})
        if self.metrics is not None:
            self.metrics.load_seconds.labels(entry.id).observe(entry.load_seconds)

    def _fail(self, entry: ModelEntry, e: BaseException) -> None:
        entry.state, entry.reason, entry.reserved, entry.model = (
            ModelState.FAILED,
            f"{type(e).__name__}: {e}",
            0,
            None,
        )
        entry.stage = "failed"
        log.error("model load failed", extra={"model": entry.id, "reason": entry.reason})

    # ---- unload ---------------------------------------------------------------------------------------
    async def unload(self, model_id: str, mode: str = "drain") -> ModelEntry:
        entry = self.entry(model_id)
        await self._settled(entry, ModelState.LOADING)  # a load in progress finishes first
        try:
            if entry.state is ModelState.FAILED:
                entry.state, entry.reason, entry.progress = ModelState.AVAILABLE, None, 0.0
            if entry.state is ModelState.LOADED:
                entry.state, entry.stage = ModelState.UNLOADING, f"unloading ({mode})"
                entry.task = asyncio.create_task(self._run_unload(entry, mode), name=f"unload:{entry.id}")
            task = entry.task if entry.state is ModelState.UNLOADING else None
        finally:
            self._lock.release()
        if task is not None:
            await asyncio.shield(task)
        return entry

    async def _run_unload(self, entry: ModelEntry, mode: str) -> None:
        model = entry.model
        try:
            if model is not None:
                await model.shutdown(drain=mode == "drain", timeout=self.settings.drain_timeout_s)
                await asyncio.to_thread(model.release)
        except Exception:  # noqa: BLE001 - the model is gone either way; say so in the log
            log.exception("error while unloading", extra={"model": entry.id})
        finally:
            entry.model, entry.state, entry.reserved, entry.progress = None, ModelState.AVAILABLE, 0, 0.0
            entry.stage, entry.tensor_parallel, entry.data_parallel = "", None, None
            log.info("model unloaded", extra={"model": entry.id, "mode": mode})

    # ---- requests -------------------------------------------------------------------------------------
    async def acquire(self, model_id: str) -> Lease:
        """A lease on a loaded model, waiting (bounded) for one that is loading; 404/503 otherwise."""
        entry = self.entry(model_id)
        if self.draining:
            raise ApiError(503, "The neuron is shutting down", "shutting_down", headers={"Retry-After": "5"})
        if entry.state is ModelState.AVAILABLE and (self.settings.auto_load or model_id in self.starting):
            await self.load(model_id, wait=False)
        if entry.state is ModelState.LOADING and entry.task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(entry.task), self.settings.load_wait_s)
        if entry.state is ModelState.LOADED and entry.model is not None:
            return Lease(entry)
        retry = {"Retry-After": "2"}
        if entry.state is ModelState.FAILED:
            raise ApiError(503, f"'{model_id}' failed to load: {entry.reason}", "model_failed", "model")
        if entry.state in (ModelState.LOADING, ModelState.UNLOADING):
            raise ApiError(
                503, f"'{model_id}' is {entry.state}; retry shortly", f"model_{entry.state}", "model", retry
            )
        raise ApiError(
            503,
            f"'{model_id}' is not loaded; load it with POST /models/load",
            "model_not_loaded",
            "model",
            retry,
        )

    # ---- compaction ---------------------------------------------------------------------------------------
    async def compact(self, model_id: str | None = None) -> dict[str, Any]:
        """Re-materialise idle models' weights into fresh buffers; busy models are skipped, not blocked."""
        targets = [self.entry(model_id)] if model_id else self.loaded()
        done, skipped = [], {}
        for e in targets:
            if e.state is not ModelState.LOADED or e.model is None:
                skipped[e.id] = f"not loaded ({e.state})"
            elif e.in_flight or e.model.stats().active or e.model.stats().queue_depth:
                skipped[e.id] = "busy (requests in flight)"
            elif await asyncio.to_thread(e.model.compact):
                done.append(e.id)
            else:
                skipped[e.id] = "not supported by this engine"
        return {"compacted": done, "skipped": skipped}

    # ---- shutdown -------------------------------------------------------------------------------------
    async def shutdown(self) -> None:
        """Stop admitting, finish in-flight requests (bounded by drain_timeout_s), unload everything."""
        self.draining = True
        loading = [e.task for e in self.entries.values() if e.state is ModelState.LOADING and e.task]
        if loading:
            await asyncio.gather(*loading, return_exceptions=True)
        await asyncio.gather(*(self.unload(e.id, "drain") for e in self.loaded()), return_exceptions=True)
