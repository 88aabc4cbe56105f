"""Greedy decoding with the policy's KV cache, for measuring a warm start.

    tokens, lengths = greedy_decode(config, params, input_ids, attention_mask, pixel_values,
                                    image_grid_thw, max_new_tokens=64, stop_ids=(151645, 151643))

input_ids / attention_mask int32[B, T] (left-padded prompts), pixel_values float32[B*P, 1176],
image_grid_thw a host int array [B, 3]. Returns tokens int32[B, M] (each row's argmax tokens, its
stop token included, then `pad_id`) and lengths int32[B] (tokens up to and including the stop
token; M when none came). One prefill, then M - 1 cached decode steps in a `lax.scan`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, init_cache


def greedy_decode(config: Qwen2_5_VLConfig, params, input_ids, attention_mask, pixel_values, image_grid_thw,
                  max_new_tokens: int, stop_ids: Sequence[int], pad_id: int = 151643):
    grid = np.asarray(image_grid_thw, np.int32)
    fn = _compiled(config, tuple(map(tuple, grid.tolist())), int(max_new_tokens), tuple(int(s) for s in stop_ids),
                   int(pad_id))
    return fn(params, jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32),
              jnp.asarray(pixel_values, jnp.float32))


_CACHE: dict = {}


def _compiled(config, grid, max_new_tokens, stop_ids, pad_id):
    key = (config, grid, max_new_tokens, stop_ids, pad_id)
    if key not in _CACHE:
        _CACHE[key] = jax.jit(lambda p, ids, mask, pv: _decode(config, np.asarray(grid, np.int32), max_new_tokens,
                                                               stop_ids, pad_id, p, ids, mask, pv))
    return _CACHE[key]


def _decode(config, grid, max_new_tokens, stop_ids, pad_id, params, input_ids, attention_mask, pixel_values):
    model = Qwen2_5_VL(config)
    b, t = input_ids.shape
    cache = init_cache(config, b, t + max_new_tokens)
    logits, cache = model.apply({"params": params}, input_ids, cache, pixel_values, grid, attention_mask,
                                method=Qwen2_5_VL.prefill)
    stops = jnp.asarray(stop_ids, jnp.int32)
    first = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def step(carry, _):
        token, done, cache = carry
        logits, cache = model.apply({"params": params}, token, cache, method=Qwen2_5_VL.decode)
        nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        done = done | jnp.isin(token, stops)
        nxt = jnp.where(done, pad_id, nxt)
        return (nxt, done, cache), nxt

    init = (first, jnp.zeros((b,), bool), cache)
    _, rest = jax.lax.scan(step, init, None, length=max_new_tokens - 1)
    tokens = jnp.concatenate([first[:, None], rest.T], axis=1)
    is_stop = jnp.isin(tokens, stops)
    lengths = jnp.where(is_stop.any(axis=1), jnp.argmax(is_stop, axis=1) + 1, max_new_tokens)
    tokens = jnp.where(jnp.arange(max_new_tokens)[None] < lengths[:, None], tokens, pad_id)
    return tokens, lengths.astype(jnp.int32)
