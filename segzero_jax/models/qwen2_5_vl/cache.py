"""KV cache pytree of the Qwen2.5-VL decoder (filled by `Qwen2_5_VL.prefill`, advanced by `decode`).

  k, v      rotated keys / values, compute dtype by default: one `[layers, B, S, K, H]` array
            (`config.scan_layers`, the scanned stack's layout), or a tuple of `layers` arrays
            `[B, S, K, H]`, one buffer per layer (the unscanned decoding layout)
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

import jax.numpy as jnp

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

Cache = dict[str, Any]


def init_cache(config: Qwen2_5_VLConfig, batch: int, max_len: int, dtype: Any = None) -> Cache:
    """Empty KV cache in `config`'s layout (see the module docstring), lengths and rope_deltas
    int32[B]."""
    t = config.text
    dtype = config.compute_dtype if dtype is None else dtype
    if config.scan_layers:
        shape = (t.num_layers, batch, max_len, t.num_kv_heads, t.head_dim)
        k, v = jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)
    else:
        shape = (batch, max_len, t.num_kv_heads, t.head_dim)
        k = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_layers))
        v = tuple(jnp.zeros(shape, dtype) for _ in range(t.num_layers))
    return {"k": k, "v": v, "lengths": jnp.zeros((batch,), jnp.int32),
            "rope_deltas": jnp.zeros((batch,), jnp.int32)}


def cache_logical_axes(config: Qwen2_5_VLConfig) -> dict[str, Any]:
    """Logical axis names of `init_cache`'s pytree: an axes tuple per array (for the unscanned
    layout, k and v hold a tuple of them, one per layer). Shardings: `jax.tree.map(lambda ax,
    a: parallel.named_sharding(ax, a.shape, mesh), axes, cache, is_leaf=is_axes)`."""
    kv = ("act_batch", "act_length", "kv_heads", "head_dim")
    if config.scan_layers:
        k = v = ("layers",) + kv
    else:
        k = v = (kv,) * config.text.num_layers
    return {"k": k, "v": v, "lengths": ("act_batch",), "rope_deltas": ("act_batch",)}


def is_axes(x: Any) -> bool:
    """True for one array's logical axes (a tuple of names / None), the leaves of
    `cache_logical_axes`."""
    return isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x)


def cache_capacity(cache: Cache) -> int:
    """S: key slots per row."""
    k = cache["k"]
    return k[0].shape[1] if isinstance(k, (tuple, list)) else k.shape[2]


def group_cache(config: Qwen2_5_VLConfig, prompt_cache: Cache, group_size: int, max_new_tokens: int,
                dtype: Any = None) -> Cache:
    """The generated-token cache of `group_size` samples per prompt for grouped decoding
    (`Qwen2_5_VL.decode(..., prompt_cache=...)`): B*n rows, prompt-major (row b*n + j is sample
    j of prompt b), `max_new_tokens` slots each, empty; `rope_deltas` carries each row's offset
    past its prompt (prompt length + the prompt's M-RoPE delta), so the first generated token
    takes the rotary position that follows its prompt."""
    b = prompt_cache["lengths"].shape[0]
    cache = init_cache(config, b * group_size, max_new_tokens, dtype)
    offset = prompt_cache["lengths"] + prompt_cache["rope_deltas"]
    cache["rope_deltas"] = jnp.repeat(offset.astype(jnp.int32), group_size)
    return cache
