"""Qwen3.6 (HF ``qwen3_5``): hybrid Gated DeltaNet + gated attention decoder and ViT, as flax.nnx modules."""
