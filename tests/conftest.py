"""Suite-wide settings: CPU JAX, exact fp32 matmuls for parity tests, quiet logs.

Tests that need a fake multi-device CPU mesh run in their own subprocess (the device count must be set before
JAX initialises), see tests/sharding/.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
