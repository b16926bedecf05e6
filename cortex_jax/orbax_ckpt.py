"""Orbax checkpoints of a loaded nnx state, restored straight into target shardings (faster reloads).

Layout of a converted directory (``scripts/convert_orbax.py``)::

    <dir>/config.json, tokenizer files, ...   copied from the HF directory (everything but *.safetensors)
    <dir>/orbax/                              the state as a pure dict of arrays (orbax StandardCheckpointer)
    <dir>/cortex_orbax.json                   {"format": 1, "dtype": ..., "source": ..., "with_mtp": ...}

The saved arrays are in the *model's* layout (after the weight map's transforms, GDN channels already in
key-head-group order), which is the same for every mesh, so one conversion serves every (dp, tp). Restoring
passes each leaf as a ``jax.ShapeDtypeStruct`` carrying its ``NamedSharding``: tensorstore reads only the
chunks each device addresses, with no full copy on the host.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
from flax import nnx

MARKER = "cortex_orbax.json"
STATE_DIR = "orbax"
FORMAT = 1


def is_orbax_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def read_marker(path: str | Path) -> dict[str, Any]:
    return json.loads((Path(path) / MARKER).read_text())


def save(state: nnx.State, src_dir: str | Path, out_dir: str | Path, **meta: Any) -> Path:
    """Write ``state`` (and ``src_dir``'s non-weight files) as a converted directory at ``out_dir``."""
    import orbax.checkpoint as ocp

    src, out = Path(src_dir), Path(out_dir).resolve()
    if out.exists():
        raise FileExistsError(f"{out} exists; remove it or choose another directory")
    out.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors") and f.name != "model.safetensors.index.json":
            shutil.copy2(f, out / f.name)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(out / STATE_DIR, nnx.to_pure_dict(state))
        ckptr.wait_until_finished()
    (out / MARKER).write_text(json.dumps({"format": FORMAT, "source": str(src.resolve()), **meta}, indent=1))
    return out


def restore(ckpt_dir: str | Path, abstract: nnx.State, shardings: Any) -> nnx.State:
    """The state saved in ``ckpt_dir``, each array restored into its sharding (and cast to the abstract dtype).

    Strict like the safetensors loader: a missing or extra parameter, or a shape mismatch, raises.
    """
    import orbax.checkpoint as ocp

    from cortex_jax.checkpoint import CheckpointError

    marker = read_marker(ckpt_dir)
    if marker.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt_dir}: orbax format {marker.get('format')} (expected {FORMAT})")
    shapes = nnx.to_pure_dict(abstract)
    shards = nnx.to_pure_dict(shardings)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shards)
    path = Path(ckpt_dir).resolve() / STATE_DIR
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        saved = getattr(meta, "item_metadata", meta)
        _check_tree(ckpt_dir, saved, target)
        pure = ckptr.restore(path, target)
    state = jax.tree.map(lambda x: x, abstract)  # a copy to fill
    nnx.replace_by_pure_dict(state, pure)
    return state


def _check_tree(ckpt_dir: Any, saved: Any, target: Any) -> None:
    from cortex_jax.checkpoint import CheckpointError

    def flat(tree: Any) -> dict[str, Any]:
        # orbax metadata keys list indices as strings ('3'), the model's state as ints: compare as text
        return {".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in p): x
                for p, x in jax.tree_util.tree_leaves_with_path(tree)}

    have, want = flat(saved), flat(target)
    errors = [f"missing {k}" for k in sorted(set(want) - set(have))]
    errors += [f"unexpected {k}" for k in sorted(set(have) - set(want))]
    errors += [f"{k}: saved {tuple(have[k].shape)} vs model {tuple(want[k].shape)}"
               for k in sorted(set(have) & set(want)) if tuple(have[k].shape) != tuple(want[k].shape)]
    if errors:
        raise CheckpointError(f"{ckpt_dir}: orbax state does not fit the model:\n  " + "\n  ".join(errors[:50]))
