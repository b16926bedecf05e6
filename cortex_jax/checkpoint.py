"""Strict safetensors checkpoint loading straight into (sharded) device arrays, through a weight map.

A *weight map* is data (a sequence of :class:`Rule`): each rule matches checkpoint keys with a regex and names
the target state path (``re`` template, dotted nnx path such as ``model.layers.3.mlp.up_proj.kernel``) and a
:class:`Transform` from the file layout to the param layout. The loader is model-agnostic:

1. read ``model.safetensors`` or every shard of ``model.safetensors.index.json``: headers only; tensors are
   memory-mapped views, so a full copy never sits in host memory twice;
2. resolve every key through the map and check coverage: unmatched / unexpected keys, params nothing fills,
   duplicate fills and shape mismatches are collected and raised together as one :class:`CheckpointError`
   naming every key and shape;
3. per tensor, ``jax.make_array_from_callback`` asks for exactly the slices each device addresses; the
   callback reads that slice from the mmap, applies the transform and casts to the param dtype. Plain
   transposes (PyTorch Linear ``[out, in]`` → kernel ``[in, out]``) are the exception: each device reads its
   block as it lies in the file and transposes on the device (host transposes are ~20x slower than copies).

The headers are parsed here rather than with ``safetensors.safe_open``: its numpy backend cannot return bf16
(``TypeError: data type 'bfloat16' not understood`` with safetensors 0.8), and the format (8-byte
little-endian header length, JSON header with ``dtype``/``shape``/``data_offsets``, raw little-endian data)
is simple to validate strictly. bf16 uses ``ml_dtypes.bfloat16``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}

Index = tuple[slice, ...]


class CheckpointError(Exception):
    """A checkpoint that cannot fill the model exactly; the message names the file, key(s) and shapes."""


# ---- transforms ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transform:
    """File layout → param layout. ``out_shape`` maps the file tensor's shape to the param's; ``src_index``
    maps a param slice to the file slice that holds it; ``apply`` turns that file slice into the param slice.

    ``view`` (optional): file shape → the shape of a reshape of the file tensor (free on the memmap) that
    ``src_index`` and ``apply`` then see instead of the file's own shape, e.g. the fused ViT qkv ``[3·H·K, D]``
    as ``[3, H·K, D]`` so a head-sharded slice is a plain block. ``perm`` (optional): set when ``apply`` is
    exactly ``np.transpose(x, perm)`` of that (viewed) slice; the loader then reads each device's block as it
    lies and transposes on the device (:func:`_load_transposed`) instead of transposing on the host."""

    name: str
    out_shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    src_index: Callable[[Index], tuple[Any, ...]]
    apply: Callable[[np.ndarray], np.ndarray]
    view: Callable[[tuple[int, ...]], tuple[int, ...]] | None = None
    perm: tuple[int, ...] | None = None


IDENTITY = Transform("identity", lambda s: tuple(s), lambda i: tuple(i), lambda x: x)
# PyTorch Linear [out, in] -> kernel [in, out]
TRANSPOSE = Transform(
    "transpose",
    lambda s: tuple(s[::-1]) if len(s) == 2 else ("bad-rank", *s),
    lambda i: (i[1], i[0]),
    lambda x: x.T,
    perm=(1, 0),
)
# depthwise Conv1d weight [C, 1, K] -> taps [K, C]
CONV1D = Transform(
    "conv1d",
    lambda s: (s[2], s[0]) if len(s) == 3 and s[1] == 1 else ("bad-rank", *s),
    lambda i: (i[1], 0, i[0]),
    lambda x: x.T,
)



def permuted(base: Transform, axis: int, perm: np.ndarray, name: str | None = None) -> Transform:
    """``base`` followed by a reordering of the param's dimension ``axis``: param index ``i`` along it holds
    ``base``'s output index ``perm[i]``.

    The callback still reads only the rows a shard needs: a param slice becomes an integer index array into
    the file (numpy fancy indexing on the memmap copies just those rows). Used to store channels in an order
    that shards contiguously (the Gated DeltaNet q|k|v stripes, docs/sharding.md).
    """
    perm = np.asarray(perm, np.int64)

    def out_shape(s: tuple[int, ...]) -> tuple[int, ...]:
        shape = base.out_shape(s)
        if len(shape) <= axis or shape[axis] != len(perm):
            return ("bad-permutation", *shape)
        return shape

    def src_index(i: Index) -> tuple[Any, ...]:
        i = list(i)
        i[axis] = perm[i[axis]]
        return base.src_index(tuple(i))

    # no ``perm``: the fancy-indexed rows are gathered on the host (the callback path), so that stays exact
    return Transform(name or f"{base.name}+permute{axis}", out_shape, src_index, base.apply, view=base.view)

@dataclass(frozen=True)
class Rule:
    """``pattern`` (full match on the checkpoint key) → ``target`` (``re.sub`` template on the key).

    ``target=None`` marks keys the model deliberately has no place for: with ``drop`` set they are skipped and
    logged (e.g. an lm_head of a tied model); otherwise they are errors reported with ``reason``.
    """

    pattern: str
    target: str | None
    transform: Transform = IDENTITY
    drop: bool = False
    reason: str = ""
    _re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_re", re.compile(self.pattern))

    def match(self, key: str) -> re.Match | None:
        return self._re.fullmatch(key)


# ---- safetensors reading ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    key: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(file: Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors header; raise CheckpointError for anything malformed."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{file}: corrupt safetensors file (shorter than the 8-byte header length)")
            n = int.from_bytes(raw_len, "little")
            if n <= 0 or 8 + n > size:
                raise CheckpointError(f"{file}: corrupt safetensors file (header length {n} exceeds file size {size})")
            header = json.loads(f.read(n))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: corrupt safetensors file ({e})") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: corrupt safetensors file (header is not a JSON object)")
    base = 8 + n
    out = {}
    for key, meta in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = (
                meta["dtype"],
                tuple(int(s) for s in meta["shape"]),
                meta["data_offsets"],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{file}: corrupt safetensors header entry for {key!r}: {meta!r}") from e
        if dtype not in _DTYPES:
            raise CheckpointError(f"{file}: tensor {key!r} has unsupported dtype {dtype}")
        expect = int(np.prod(shape)) * np.dtype(_DTYPES[dtype]).itemsize
        if end - start != expect or start < 0 or base + end > size:
            raise CheckpointError(
                f"{file}: corrupt safetensors file: tensor {key!r} {dtype}{list(shape)} spans bytes "
                f"[{start}, {end}) of a {size - base}-byte data section (expected {expect} bytes)"
            )
        out[key] = TensorInfo(key, file, dtype, shape, base + start, base + end)
    return out


def list_tensors(ckpt_dir: str | Path) -> dict[str, TensorInfo]:
    """Every tensor of a checkpoint directory (single file or sharded with an index)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d}: checkpoint directory does not exist")
    index = d / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: unreadable shard index ({e})") from e
        tensors: dict[str, TensorInfo] = {}
        for fname in sorted(set(weight_map.values())):
            f = d / fname
            if not f.is_file():
                raise CheckpointError(f"{index}: shard {fname} is listed but missing")
            tensors.update(read_header(f))
        listed_missing = [k for k, fname in weight_map.items() if k not in tensors or tensors[k].file.name != fname]
        if listed_missing:
            raise CheckpointError(f"{index}: keys listed but not in their shard: {listed_missing[:10]}")
        return tensors
    single = d / SINGLE_FILE
    if single.is_file():
        return read_header(single)
    raise CheckpointError(f"{d}: no {SINGLE_FILE} or {INDEX_FILE}")


class _Mmaps:
    """One read-only uint8 memmap per file; tensor views are zero-copy slices of it."""

    def __init__(self):
        self._maps: dict[Path, np.memmap] = {}

    def view(self, t: TensorInfo) -> np.ndarray:
        mm = self._maps.get(t.file)
        if mm is None:
            mm = self._maps[t.file] = np.memmap(t.file, dtype=np.uint8, mode="r")
        return mm[t.start : t.end].view(_DTYPES[t.dtype]).reshape(t.shape)


# ---- loading ---------------------------------------------------------------------------------------------


def _path_str(path: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in path)


def resolve(
    keys: Sequence[str], weight_map: Sequence[Rule]
) -> tuple[dict[str, tuple[str, Transform]], list[str], list[str]]:
    """Map checkpoint keys: returns ({key: (target, transform)}, unexpected messages, dropped keys)."""
    mapped, unexpected, dropped = {}, [], []
    for key in keys:
        for rule in weight_map:
            m = rule.match(key)
            if m is None:
                continue
            if rule.target is not None:
                mapped[key] = (m.expand(rule.target), rule.transform)
            elif rule.drop:
                dropped.append(key)
            else:
                unexpected.append(f"{key}: {rule.reason or 'not used by this model'}")
            break
        else:
            unexpected.append(f"{key}: matches no weight-map rule")
    return mapped, unexpected, dropped


def load_state(
    ckpt_dir: str | Path,
    abstract_state: nnx.State,
    shardings: Any,
    weight_map: Sequence[Rule],
    *,
    dtype: Any = None,
    progress: Callable[[int, int, int, int], None] | None = None,
    ignore_prefixes: Sequence[str] = (),
) -> nnx.State:
    """Fill ``abstract_state`` (from ``nnx.split(nnx.eval_shape(...))``) from the checkpoint at ``ckpt_dir``.

    ``shardings``: a pytree like ``abstract_state`` of ``jax.sharding.Sharding`` (see
    ``cortex_jax.sharding.state_shardings``). ``dtype``: cast every floating param to it (default: each
    param's abstract dtype). ``progress(done, total, bytes_done, bytes_total)`` is called after each tensor.
    ``ignore_prefixes``: checkpoint keys starting with these are skipped on purpose (never silently
    otherwise).
    """
    tensors = list_tensors(ckpt_dir)
    keys = [k for k in tensors if not any(k.startswith(p) for p in ignore_prefixes)]
    mapped, problems, dropped = resolve(keys, weight_map)
    for k in dropped:
        log.info("checkpoint key %s skipped by the weight map", k)

    flat = {_path_str(p): v for p, v in nnx.to_flat_state(abstract_state)}
    flat_sh = (
        {_path_str(p): s for p, s in nnx.to_flat_state(shardings)}
        if isinstance(shardings, nnx.State)
        else {_path_str(p): s for p, s in _flat_shardings(shardings)}
    )
    filled: dict[str, str] = {}
    for key, (target, tf) in mapped.items():
        info = tensors[key]
        if target not in flat:
            problems.append(f"{key}: maps to {target!r}, which this model does not have")
            continue
        if target in filled:
            problems.append(f"{key}: maps to {target!r}, already filled by {filled[target]}")
            continue
        filled[target] = key
        want = tuple(flat[target].shape)
        got = tf.out_shape(info.shape)
        if got != want:
            problems.append(
                f"{key}: shape {list(info.shape)} ({tf.name} -> {list(got)}) but {target} needs {list(want)}"
            )
    missing = sorted(set(flat) - set(filled))
    if problems or missing:
        lines = [f"checkpoint {ckpt_dir} does not match the model:"]
        if problems:
            lines.append(f"  unexpected or mis-shaped ({len(problems)}):")
            lines += [f"    {p}" for p in problems[:50]]
        if missing:
            lines.append(f"  missing ({len(missing)}): no checkpoint tensor for")
            lines += [f"    {m} {list(flat[m].shape)}" for m in missing[:50]]
        raise CheckpointError("\n".join(lines))

    mmaps = _Mmaps()
    total, bytes_total = len(filled), sum(tensors[k].nbytes for k in filled.values())
    bytes_done = 0
    out = []
    for done, (path, var) in enumerate(nnx.to_flat_state(abstract_state), start=1):
        target = _path_str(path)
        key = filled[target]
        info, tf = tensors[key], mapped[key][1]
        want_dtype = np.dtype(dtype if dtype is not None and jnp.issubdtype(var.dtype, jnp.floating) else var.dtype)
        src = mmaps.view(info)
        if tf.view is not None:
            src = src.reshape(tf.view(info.shape))

        def cb(index: Index, src=src, tf=tf, want_dtype=want_dtype, shape=tuple(var.shape)) -> np.ndarray:
            index = tuple(index) + (slice(None),) * (len(shape) - len(tuple(index)))
            return np.ascontiguousarray(tf.apply(src[tf.src_index(index)]).astype(want_dtype))

        try:
            if tf.perm is not None:
                arr = _load_transposed(src, want_dtype, flat_sh[target], tf.perm)
            else:
                arr = jax.make_array_from_callback(tuple(var.shape), flat_sh[target], cb)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{info.file}: cannot read tensor {key!r}: {e}") from e
        out.append((path, var.replace(value=arr)))
        bytes_done += info.nbytes
        if progress is not None:
            progress(done, total, bytes_done, bytes_total)
    return nnx.from_flat_state(out)


def _load_transposed(
    src: np.ndarray, dtype: np.dtype, sharding: jax.sharding.Sharding, perm: tuple[int, ...] = (1, 0)
) -> jax.Array:
    """``np.transpose(src, perm)`` with ``sharding``: a PyTorch Linear weight ``[out, in]`` from the file as the
    kernel ``[in, out]`` (``perm`` (1, 0)), or any axis permutation of a (viewed) file tensor.

    Each device reads its block of the file as it lies (a plain copy: a host-side transpose runs at ~0.45 GB/s
    on one core, and the 27B checkpoint is 95 % Linear weights) and the transpose happens on the device, in
    place of the shards: the file-layout array is sharded with the mesh axes moved along with their dimensions,
    so the jitted transpose needs no communication.
    """
    file_sharding = sharding
    if isinstance(sharding, NamedSharding):
        spec = tuple(sharding.spec) + (None,) * (len(perm) - len(sharding.spec))
        file_spec = [None] * len(perm)
        for out_axis, src_axis in enumerate(perm):
            file_spec[src_axis] = spec[out_axis]
        file_sharding = NamedSharding(sharding.mesh, PartitionSpec(*file_spec))

    def cb(index: Index) -> np.ndarray:
        return np.ascontiguousarray(src[tuple(index)].astype(dtype))

    raw = jax.make_array_from_callback(tuple(src.shape), file_sharding, cb)
    return _transpose_to(sharding, tuple(perm))(raw)


@functools.lru_cache(maxsize=64)
def _transpose_to(sharding: jax.sharding.Sharding, perm: tuple[int, ...] = (1, 0)):
    return jax.jit(functools.partial(jnp.transpose, axes=perm), out_shardings=sharding)


def _flat_shardings(shardings: Any):
    leaves = jax.tree_util.tree_leaves_with_path(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    for p, s in leaves:
        yield tuple(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in p), s
