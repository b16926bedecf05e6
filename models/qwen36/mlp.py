"""SwiGLU MLP (reference §3.3): ``down_proj(silu(gate_proj(x)) * up_proj(x))``, no biases.

Shape letters: B batch, T tokens, D model width, F intermediate size.

Checkpoint tensors: ``mlp.gate_proj.weight [F, D]``, ``mlp.up_proj.weight [F, D]``, ``mlp.down_proj.weight
[D, F]`` (stored here transposed as ``kernel``). F shards over ``tp`` (logical axis ``ffn``).
"""

from __future__ import annotations

import jax
from flax import nnx

from cortex_jax.sharding import Sharder
from models.qwen36.layers import DType, Linear


class Qwen36MLP(nnx.Module):
    def __init__(
        self,
        dim: int,
        ffn: int,
        *,
        dtype: DType,
        param_dtype: DType,
        rngs: nnx.Rngs | None,
        shard: Sharder | None = None,
    ):
        self.shard = shard or Sharder()
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Linear(dim, ffn, ("embed", "ffn"), **kw)
        self.up_proj = Linear(dim, ffn, ("embed", "ffn"), **kw)
        self.down_proj = Linear(ffn, dim, ("ffn", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:  # [B, T, D] -> [B, T, D]
        # silu and the product in the activation dtype, as HF's ACT2FN on a bf16 tensor
        cols = ("batch", None, "ffn")
        h = jax.nn.silu(self.shard(self.gate_proj(x), cols)) * self.shard(self.up_proj(x), cols)
        return self.shard(self.down_proj(h), ("batch", None, "embed"))
