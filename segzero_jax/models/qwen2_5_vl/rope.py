"""Multimodal rotary positions (M-RoPE) of Qwen2.5-VL, jit-compatible.

Text tokens get the same position on all three axes (t, h, w); the tokens of an image with
merged grid (t, h', w') get `start + (ti, hi, wi)`, and the text after the image continues at
`start + max(h', w')` (transformers' `get_rope_index` for images). Padding (attention_mask 0)
is skipped and gets position 0. `rope_deltas[b] = max_position + 1 - num_valid_tokens`, so a
token decoded after `n` valid tokens sits at `n + rope_deltas`.

Computed inside jit with static shapes by a cumsum: each valid token advances the running
position by 1 (text) or, for the last token of an image block, by max(h', w'); an image token's
index inside its image (from a global cumsum over image tokens, batch-major like the
reference's concatenated features) gives (ti, hi, wi). `image_grid_thw` may be traced.

cos/sin tables: `inv_freq` over head_dim/2 frequencies; frequency chunk i of `mrope_section`
reads the angles of axis i % 3; the result is duplicated to the full head dim.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from segzero_jax.models.layers import rotary_inv_freq


def get_rope_index(input_ids: jax.Array, attention_mask: Optional[jax.Array],
                   image_grid_thw: Optional[jax.Array], *, image_token_id: int,
                   spatial_merge_size: int) -> tuple[jax.Array, jax.Array]:
    """3-D positions int32[3, B, T] and rope_deltas int32[B, 1] from token ids and image grids.

    input_ids int32[B, T]; attention_mask int32[B, T] (1 valid, 0 padding) or None;
    image_grid_thw int32[I, 3] (patch grid per image, in order of appearance) or None.
    """
    b, t = input_ids.shape
    valid = jnp.ones((b, t), jnp.int32) if attention_mask is None else (attention_mask > 0).astype(jnp.int32)
    is_img = (input_ids == image_token_id).astype(jnp.int32) * valid
    if image_grid_thw is None:
        zero = jnp.zeros((b, t), jnp.int32)
        img_t = img_h = img_w = last = zero
        span = jnp.ones((b, t), jnp.int32)
    else:
        grid = jnp.asarray(image_grid_thw, jnp.int32)
        gt, gh, gw = grid[:, 0], grid[:, 1] // spatial_merge_size, grid[:, 2] // spatial_merge_size
        counts = gt * gh * gw
        ends = jnp.cumsum(counts)
        ordinal = (jnp.cumsum(is_img.reshape(-1)) - 1).reshape(b, t)   # global image-token index
        image = jnp.clip(jnp.searchsorted(ends, ordinal, side="right"), 0, grid.shape[0] - 1)
        k = ordinal - (ends - counts)[image]
        hw = gh[image] * gw[image]
        img_t, img_h, img_w = k // hw, (k // gw[image]) % gh[image], k % gw[image]
        last = (k == counts[image] - 1).astype(jnp.int32)
        span = jnp.maximum(gh[image], gw[image])
    step = jnp.where(is_img > 0, last * span, 1) * valid
    start = jnp.cumsum(step, axis=1) - step                      # exclusive cumsum
    pos = jnp.stack([start + img_t * is_img, start + img_h * is_img, start + img_w * is_img])
    pos = pos * valid[None]
    n_valid = jnp.sum(valid, axis=1)
    deltas = jnp.max(jnp.where(valid[None] > 0, pos, -1), axis=(0, 2)) + 1 - n_valid
    return pos.astype(jnp.int32), deltas[:, None].astype(jnp.int32)


def mrope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float,
                  mrope_section: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """float32 cos/sin `[B, T, H]` from 3-D positions int32[3, B, T]."""
    inv_freq = rotary_inv_freq(head_dim, theta)                              # [H/2]
    angles = position_ids.astype(jnp.float32)[..., None] * inv_freq          # [3, B, T, H/2]
    bounds = [0]
    for s in mrope_section:
        bounds.append(bounds[-1] + s)
    chunks = [angles[i % 3, ..., lo:hi] for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))]
    half = jnp.concatenate(chunks, axis=-1)
    full = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(full), jnp.sin(full)


def vision_cos_sin(pos_hw: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """2-D rotary of the vision tower: float32 cos/sin `[L, H]` from (row, col) int32[L, 2].

    The first H/4 frequencies rotate by the row, the next H/4 by the column, duplicated.
    """
    inv_freq = rotary_inv_freq(head_dim // 2, theta)                         # [H/4]
    angles = pos_hw.astype(jnp.float32)[..., None] * inv_freq                # [L, 2, H/4]
    half = angles.reshape(angles.shape[0], -1)                               # [L, H/2]
    full = jnp.concatenate([half, half], axis=-1)
    return jnp.cos(full), jnp.sin(full)
