"""Load a Qwen3.6 HF checkpoint directory into a (sharded) ``Qwen36ForCausalLM`` state (STYLE F3).

``nnx.eval_shape`` builds the abstract model (no allocation) → logical axes give each param a NamedSharding on
the mesh → the strict loader places every tensor straight into its shards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from flax import nnx

from cortex_jax import orbax_ckpt
from cortex_jax.checkpoint import CheckpointError
from cortex_jax.checkpoint import load_state as _load_state
from cortex_jax.mesh import make_mesh
from cortex_jax.sharding import AxisRules, rules_for, state_shardings
from models.qwen36.config import ConfigError, Qwen36Config
from models.qwen36.decoder import Qwen36ForCausalLM
from models.qwen36.weight_map import qwen36_weight_map


def abstract_model(
    cfg: Qwen36Config,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any | None = None,
    rules: AxisRules | None = None,
    gdn_chunk_size: int = 64,
    with_mtp: bool | None = None,
    mesh: Any = None,
) -> tuple[nnx.GraphDef, nnx.State]:
    """(graphdef, abstract state) of the text model; nothing is allocated. ``rules``/``mesh`` go to the model's
    activation constraints (pass rules fitted by ``rules_for``)."""
    abstract = nnx.eval_shape(
        lambda: Qwen36ForCausalLM(
            cfg,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=nnx.Rngs(0),
            rules=rules,
            gdn_chunk_size=gdn_chunk_size,
            with_mtp=with_mtp,
            mesh=mesh,
        )
    )
    return nnx.split(abstract)


def load_model(
    ckpt_dir: str | Path,
    *,
    dtype: Any = jnp.float32,
    param_dtype: Any | None = None,
    mesh: Any = None,
    rules: AxisRules | None = None,
    ignore_prefixes: Sequence[str] = (),
    gdn_chunk_size: int = 64,
    with_mtp: bool | None = None,
    progress: Callable[[int, int, int, int], None] | None = None,
) -> tuple[nnx.GraphDef, nnx.State, Qwen36Config]:
    """``(graphdef, state, cfg)`` for the checkpoint at ``ckpt_dir``.

    ``dtype``: activation dtype; ``param_dtype``: storage dtype (default ``dtype``; the checkpoint's own
    dtype is cast). ``mesh``: default a 1×1 mesh of the first device; every tensor is read from the file
    straight into its shards. ``rules``: the logical-axis table (default ``AxisRules()``), fitted to the
    model's head counts on ``mesh`` by ``rules_for`` (KV heads replicated when tp does not divide them;
    ``ValueError`` for a tp that would split a query head or a GDN key-head group). VLM checkpoints carry
    ``model.visual.*``, which this text model has no place for: pass ``ignore_prefixes=("model.visual.",)``
    to skip them on purpose. ``with_mtp=False`` drops the MTP weights (and ignores ``mtp.*`` keys).
    ``progress(done, total, bytes_done, bytes_total)`` is called after each tensor.
    ``ckpt_dir`` may also be a directory written by ``scripts/convert_orbax.py`` (``cortex_jax.orbax_ckpt``):
    the state is then restored from orbax into the same shardings (``ignore_prefixes``/``progress`` unused).
    Raises ``CheckpointError`` (missing config, unsupported model_type, missing / unexpected / mis-shaped
    tensors, corrupt files).
    """
    try:
        cfg = Qwen36Config.from_dir(ckpt_dir)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e
    mesh = mesh if mesh is not None else make_mesh(1, 1)
    rules = rules_for(cfg.text, mesh, rules)
    orbax = orbax_ckpt.is_orbax_dir(ckpt_dir)
    if orbax and with_mtp is None:
        with_mtp = orbax_ckpt.read_marker(ckpt_dir).get("with_mtp")
    graphdef, abstract = abstract_model(
        cfg,
        dtype=dtype,
        param_dtype=param_dtype,
        rules=rules,
        gdn_chunk_size=gdn_chunk_size,
        with_mtp=with_mtp,
        mesh=mesh,
    )
    if with_mtp is False:
        ignore_prefixes = (*ignore_prefixes, "mtp.")
    shardings = state_shardings(abstract, mesh, rules)
    if orbax:  # converted by scripts/convert_orbax.py: restored straight into the shardings
        return graphdef, orbax_ckpt.restore(ckpt_dir, abstract, shardings), cfg
    wmap = qwen36_weight_map(tied=cfg.tie_word_embeddings, text=cfg.text)
    state = _load_state(ckpt_dir, abstract, shardings, wmap, progress=progress, ignore_prefixes=ignore_prefixes)
    return graphdef, state, cfg
