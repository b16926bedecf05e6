"""cortex-jax: the model-agnostic JAX core (mesh, sharding, kernels, checkpoint loading, engine)."""

__version__ = "0.1.0"
