"""Pallas names that moved between jax releases, resolved in one place for every kernel (jax 0.10.x on the CPU
test machines, 0.11.x on the GPUs).

* ``SQUEEZED``: the block-shape marker for a dimension the kernel does not see (``None`` on older jax).
* ``ds``: dynamic slice helper (``pl.ds``, formerly ``pl.dslice``); ``multiple_of``: an alignment hint (identity
  where missing).
* :func:`triton_compiler_params`: the Triton backend's compiler-params dataclass (``CompilerParams``, formerly
  ``TritonCompilerParams``; in ``pallas.triton``, formerly ``pallas.gpu``). Passing it also selects the Triton
  backend where Mosaic GPU would otherwise be the default.
"""

from __future__ import annotations

from jax.experimental import pallas as pl

SQUEEZED = getattr(pl, "squeezed", None)
ds = getattr(pl, "ds", None) or pl.dslice
multiple_of = getattr(pl, "multiple_of", lambda x, _: x)


def triton_compiler_params(num_warps: int | None, num_stages: int | None):
    """The Triton compiler params of the installed jax (None if it has no Triton backend)."""
    try:
        from jax.experimental.pallas import triton as mod
    except ImportError:  # pragma: no cover - very old jax named it pallas.gpu
        try:
            from jax.experimental.pallas import gpu as mod
        except ImportError:
            return None
    cls = getattr(mod, "CompilerParams", None) or getattr(mod, "TritonCompilerParams", None)
    if cls is None:  # pragma: no cover
        return None
    return cls(num_warps=num_warps, num_stages=num_stages)
