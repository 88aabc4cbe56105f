"""segzero-jax: Seg-Zero reasoning segmentation (Qwen2.5-VL policy + SAM2) trained with GRPO in JAX."""

__version__ = "0.1.0"
