"""KV cache pytree of the Qwen2.5-VL decoder (filled by `Qwen2_5_VL.prefill`, advanced by `decode`).

  k, v      `[layers, B, S, K, H]`  rotated keys / values, compute dtype by default
  lengths   int32[B]                keys held per row: slots `[0, lengths)` are real tokens
  rope_deltas int32[B]              M-RoPE offset per row: the next token's rotary position is
                                    `lengths + rope_deltas` (see rope.get_rope_index)

Every row is packed at the front of its cache (padding of the prompt is dropped by prefill),
so attention over the cache is "the first `lengths` keys" — the lengths form that the cuDNN
kernel takes on GPU, with no dense mask. Rows advance independently: each decode step
writes row b's new key at slot `lengths[b]`. Size S for the longest prompt plus the new
tokens; a row already at capacity keeps its S keys and the step's key is dropped.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

Cache = dict[str, jax.Array]


def init_cache(config: Qwen2_5_VLConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """Empty KV cache: k/v `[layers, B, S, K, H]`, lengths int32[B], rope_deltas int32[B]."""
    t = config.text
    dtype = config.compute_dtype if dtype is None else dtype
    shape = (t.num_layers, batch, max_len, t.num_kv_heads, t.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "lengths": jnp.zeros((batch,), jnp.int32), "rope_deltas": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(config: Qwen2_5_VLConfig) -> dict[str, tuple]:
    """Logical axis names of `init_cache`'s pytree (map with nn.logical_to_mesh_sharding)."""
    kv = ("layers", "act_batch", "act_length", "kv_heads", "head_dim")
    return {"k": kv, "v": kv, "lengths": ("act_batch",), "rope_deltas": ("act_batch",)}
