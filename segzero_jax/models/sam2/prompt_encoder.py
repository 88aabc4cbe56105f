"""SAM prompt encoder: points/box corners -> sparse tokens, mask (or none) -> dense embedding.

Einsum alphabet: B prompts, P points, D prompt width (= d_model), Y/X embedding grid.

Random Fourier features (Tancik et al.), G float32[2, D/2] fixed Gaussian:
    pe(c) = [sin(2 pi (2c - 1) G), cos(2 pi (2c - 1) G)],  c in [0, 1]^2 (x / W, y / H).
Points (pixel coordinates in the model's input frame, labels -1 pad, 0 negative, 1 positive,
2/3 box corners): c = (p + 0.5) / (W, H);
    token = not_a_point                        if label == -1
            pe(c) + point_embeddings[label]    if label in 0..3
            pe(c)                              otherwise.
A padding point (0, 0) with label -1 is appended when `pad` (the image predictor always pads,
because it passes boxes as two corner points). Dense: no_mask_embed broadcast to
float[B, Y, X, D], or the mask-downscaling convs on a float[B, 4Y, 4X] mask input.
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import gelu, logical_param
from segzero_jax.models.sam2.common import Dense, LayerNorm, PatchConv
from segzero_jax.models.sam2.config import Sam2Config


def fourier_encoding(coords: jax.Array, gaussian: jax.Array) -> jax.Array:
    """float[..., 2] in [0, 1] -> float32[..., 2 * G.shape[1]]."""
    c = 2.0 * coords.astype(jnp.float32) - 1.0
    c = 2.0 * math.pi * jnp.einsum("...C,CD->...D", c, gaussian.astype(jnp.float32),
                                   precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(c), jnp.cos(c)], axis=-1)


class PromptEncoder(nn.Module):
    config: Sam2Config

    def setup(self):
        cfg = self.config
        d = cfg.d_model
        p = lambda name, shape, axes, init=nn.initializers.normal(1.0): logical_param(
            self, name, init, shape, axes, cfg.param_dtype)
        self.pe_gaussian = p("pe_gaussian", (2, d // 2), (None, "embed"))
        self.point_embeddings = p("point_embeddings", (4, d), (None, "embed"))
        self.not_a_point_embed = p("not_a_point_embed", (d,), ("embed",))
        self.no_mask_embed = p("no_mask_embed", (d,), ("embed",))
        kw = dict(dtype=jnp.float32, param_dtype=cfg.param_dtype)
        self.mask_conv0 = PatchConv(cfg.mask_in_chans // 4, 2, **kw)
        self.mask_norm0 = LayerNorm(eps=1e-6, **kw)
        self.mask_conv1 = PatchConv(cfg.mask_in_chans, 2, **kw)
        self.mask_norm1 = LayerNorm(eps=1e-6, **kw)
        self.mask_conv2 = Dense(d, axes=("conv_in", "embed"), **kw)

    def dense_pe(self) -> jax.Array:
        """float32[Y, X, D]: the encoding of every embedding-grid cell centre."""
        n = self.config.image_embedding_size
        c = (jnp.arange(n, dtype=jnp.float32) + 0.5) / n
        grid = jnp.stack(jnp.broadcast_arrays(c[None, :], c[:, None]), axis=-1)  # (x, y)
        return fourier_encoding(grid, self.pe_gaussian)

    def embed_points(self, coords: jax.Array, labels: jax.Array, pad: bool = True) -> jax.Array:
        """coords float[B, P, 2] (x, y input-frame pixels), labels int[B, P] -> float32[B, P(+1), D]."""
        cfg = self.config
        coords = coords.astype(jnp.float32) + 0.5
        labels = labels.astype(jnp.int32)
        if pad:
            coords = jnp.concatenate([coords, jnp.zeros((*coords.shape[:-2], 1, 2), jnp.float32)], -2)
            labels = jnp.concatenate([labels, -jnp.ones((*labels.shape[:-1], 1), jnp.int32)], -1)
        pe = fourier_encoding(coords / cfg.image_size, self.pe_gaussian)
        onehot = jax.nn.one_hot(labels, 4, dtype=jnp.float32)
        pe = pe + jnp.einsum("BPL,LD->BPD", onehot, self.point_embeddings.astype(jnp.float32),
                             precision=jax.lax.Precision.HIGHEST)
        return jnp.where((labels == -1)[..., None], self.not_a_point_embed.astype(jnp.float32), pe)

    def embed_masks(self, masks: jax.Array) -> jax.Array:
        """float[B, 4Y, 4X] mask logits -> float32[B, Y, X, D]."""
        x = masks[..., None].astype(jnp.float32)
        x = gelu(self.mask_norm0(self.mask_conv0(x)))
        x = gelu(self.mask_norm1(self.mask_conv1(x)))
        return self.mask_conv2(x)

    def __call__(self, coords: jax.Array, labels: jax.Array, masks: Optional[jax.Array] = None,
                 pad: bool = True) -> tuple[jax.Array, jax.Array]:
        """-> (sparse float32[B, P(+1), D], dense float32[B or 1, Y, X, D])."""
        n = self.config.image_embedding_size
        sparse = self.embed_points(coords, labels, pad)
        if masks is not None:
            dense = self.embed_masks(masks)
        else:
            dense = jnp.broadcast_to(self.no_mask_embed.astype(jnp.float32), (1, n, n, self.config.d_model))
        return sparse, dense
