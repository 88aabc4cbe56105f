"""KV cache pytree of the Qwen2.5-VL decoder (filled by `Qwen2_5_VL.prefill`, advanced by `decode`).

  k, v      `[layers, B, S, K, H]`  rotated keys / values, compute dtype by default
  valid     int32[B, S]             1 where a key holds a real token (prompt mask, then generated)
  index     int32[]                 next write slot (shared by the rows: prompts are left-padded)
  position  int32[B]                next rotary position per row (n_valid + rope_deltas)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

Cache = dict[str, jax.Array]


def init_cache(config: Qwen2_5_VLConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """Empty KV cache: k/v `[layers, B, S, K, H]`, valid int32[B, S], index int32[], position int32[B]."""
    t = config.text
    dtype = config.compute_dtype if dtype is None else dtype
    shape = (t.num_layers, batch, max_len, t.num_kv_heads, t.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
            "valid": jnp.zeros((batch, max_len), jnp.int32),
            "index": jnp.zeros((), jnp.int32), "position": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(config: Qwen2_5_VLConfig) -> dict[str, tuple]:
    """Logical axis names of `init_cache`'s pytree (map with nn.logical_to_mesh_sharding)."""
    kv = ("layers", "act_batch", "act_length", "kv_heads", "head_dim")
    return {"k": kv, "v": kv, "valid": ("act_batch", "act_length"), "index": (),
            "position": ("act_batch",)}
