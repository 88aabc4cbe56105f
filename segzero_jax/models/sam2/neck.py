"""FPN neck and sine position encoding of SAM2's image encoder, channels last.

    lateral_i = Conv1x1_i(trunk_i)                                 (i = deepest .. finest)
    fpn_i     = lateral_i + up2x(fpn_{i+1})   if i in fpn_top_down_levels, else lateral_i
    pos_i     = sine encoding of fpn_i's grid
then the `scalp` lowest-resolution levels are dropped.

Sine encoding (DETR style, normalised): for a grid of Y x X cells, with d = D/2 features per axis,
  y_e = (y + 1) / (Y + 1e-6) * 2 pi,  x_e likewise,  t_k = 10000^(2 floor(k/2) / d),
  pos = [sin/cos interleaved of y_e / t ; same for x_e]  -> float32[Y, X, D].
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.layers import constrain
from segzero_jax.models.sam2.common import Dense
from segzero_jax.models.sam2.config import Sam2Config
from segzero_jax.models.sam2.resize import resize_hwc

ACT = ("act_batch", None, None, "act_embed")


def sine_position_encoding(h: int, w: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """float32[h, w, dim] sine encoding (see the module docstring), computed like the reference
    in float32."""
    d = dim // 2
    eps, scale = 1e-6, 2 * math.pi
    y = np.arange(1, h + 1, dtype=np.float32)
    x = np.arange(1, w + 1, dtype=np.float32)
    y = y / (np.float32(h) + np.float32(eps)) * np.float32(scale)
    x = x / (np.float32(w) + np.float32(eps)) * np.float32(scale)
    k = np.arange(d, dtype=np.float32)
    t = np.float32(temperature) ** (2 * (k // 2) / np.float32(d))

    def enc(v):
        p = v[:, None] / t
        return np.stack([np.sin(p[:, 0::2]), np.cos(p[:, 1::2])], axis=2).reshape(len(v), d)

    py, px = enc(y), enc(x)
    pos = np.concatenate([np.broadcast_to(py[:, None], (h, w, d)),
                          np.broadcast_to(px[None, :], (h, w, d))], axis=-1)
    return pos.astype(np.float32)


def lateral_conv_name(level: int, num_levels: int) -> str:
    """The param name of the neck's 1x1 lateral conv at trunk `level` (0: finest): the
    reference's `convs` count from the deepest level."""
    return f"convs_{num_levels - 1 - level}"


def is_lateral_only(config: Sam2Config, level: int) -> bool:
    """Whether the neck's output at `level` is its lateral conv alone (no top-down sum)."""
    return level not in config.fpn_top_down_levels or level == len(config.backbone_channel_list) - 1


class FpnNeck(nn.Module):
    """Trunk features (finest first) -> (fpn features float[B, Y_i, X_i, d_model], pos float32[Y_i, X_i, d_model])
    for the levels kept after the scalp."""

    config: Sam2Config

    @nn.compact
    def __call__(self, xs: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array]]:
        cfg = self.config
        n = len(xs) - 1
        if len(xs) != len(cfg.backbone_channel_list):
            raise ValueError(f"FpnNeck: {len(xs)} trunk levels for channels {cfg.backbone_channel_list}")
        out, pos = [None] * len(xs), [None] * len(xs)
        prev = None
        for i in range(n, -1, -1):
            lateral = Dense(cfg.d_model, axes=("embed", "mlp"), dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, name=lateral_conv_name(i, len(xs)))(xs[i])
            if not is_lateral_only(cfg, i):
                h, w = prev.shape[1:3]
                top_down = resize_hwc(prev, (2 * h, 2 * w), cfg.fpn_interp_model)
                prev = (lateral.astype(jnp.float32) + top_down).astype(cfg.dtype)
            else:
                prev = lateral
            out[i] = constrain(prev, ACT)
            pos[i] = jnp.asarray(sine_position_encoding(prev.shape[1], prev.shape[2], cfg.d_model))
        keep = len(xs) - cfg.scalp
        return out[:keep], pos[:keep]
