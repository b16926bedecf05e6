"""Shared test helpers for the kernel tests."""

import jax

# Compile time dominates these tests (every new shape is a fresh XLA compile). LLVM -O0 roughly halves CPU
# compile time and does not change floating-point semantics; the parity checks would catch it if it did.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def fast_jit(fn, **kwargs):
    """``jax.jit`` with ``FAST_COMPILE`` compiler options (test-only)."""
    return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)
