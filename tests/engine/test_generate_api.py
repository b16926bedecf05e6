"""`cortex_jax.generate.load` refuses a name that is neither the embedded model nor a checkpoint directory with
a message naming both options (before any JAX work)."""

import pytest

from cortex_jax.checkpoint import CheckpointError
from cortex_jax.generate import load


def test_load_unknown_model_names_the_choices(tmp_path):
    for name in ("qwen3.6-tinyy", str(tmp_path / "missing")):
        with pytest.raises(CheckpointError, match="neither a checkpoint directory nor the embedded model"):
            load(name)
