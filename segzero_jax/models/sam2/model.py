"""SAM2's single-image path as one linen module: image encoder + prompt encoder + mask decoder.

    enc = model.apply({"params": p}, images, method=Sam2.encode_image)
    masks, iou, obj = model.apply({"params": p}, enc["image_embed"], enc["high_res_feats"],
                                  coords, labels, method=Sam2.decode)

`encode_image` is the reference's `forward_image` + `_prepare_backbone_features` + the
`no_mem_embed` the image predictor adds: image_embed float[B, S/16, S/16, D] and the two
high-resolution maps projected by the decoder's `conv_s0`/`conv_s1` (float[B, S/4, S/4, D/8],
float[B, S/8, S/8, D/4]). `decode` runs prompts against per-prompt image features.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.layers import logical_param
from segzero_jax.models.sam2.common import Dense
from segzero_jax.models.sam2.config import Sam2Config
from segzero_jax.models.sam2.hiera import Hiera
from segzero_jax.models.sam2.mask_decoder import MaskDecoder
from segzero_jax.models.sam2.neck import FpnNeck, is_lateral_only, lateral_conv_name
from segzero_jax.models.sam2.prompt_encoder import PromptEncoder


class Sam2(nn.Module):
    config: Sam2Config

    def setup(self):
        cfg = self.config
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.trunk = Hiera(cfg)
        self.neck = FpnNeck(cfg)
        self.conv_s0 = Dense(cfg.d_model // 8, axes=("embed", "mlp"), **kw)
        self.conv_s1 = Dense(cfg.d_model // 4, axes=("embed", "mlp"), **kw)
        self.no_mem_embed = logical_param(self, "no_mem_embed", nn.initializers.normal(0.02),
                                          (cfg.d_model,), ("embed",), cfg.param_dtype)
        self.prompt_encoder = PromptEncoder(cfg)
        self.mask_decoder = MaskDecoder(cfg)

    def encode_image(self, images: jax.Array) -> dict:
        """images float[B, S, S, 3] (resized, ImageNet-normalised) -> dict with image_embed,
        high_res_feats (s0, s1), backbone_fpn (neck levels, finest first) and vision_pos_enc."""
        cfg = self.config
        if images.shape[1:] != (cfg.image_size, cfg.image_size, 3):
            raise ValueError(f"encode_image: images must be [B, {cfg.image_size}, {cfg.image_size}, 3], "
                             f"got {images.shape}")
        feats = self.trunk(images)
        fpn, pos = self.neck(feats)
        embed = fpn[-1].astype(jnp.float32)
        if cfg.directly_add_no_mem_embed:
            embed = embed + self.no_mem_embed.astype(jnp.float32)
        out = {"image_embed": embed.astype(cfg.dtype), "backbone_fpn": fpn, "vision_pos_enc": pos}
        if cfg.use_high_res_features:
            out["high_res_feats"] = (self._high_res(feats, fpn, 0, self.conv_s0),
                                     self._high_res(feats, fpn, 1, self.conv_s1))
        return out

    def _high_res(self, feats: list[jax.Array], fpn: list[jax.Array], level: int, conv: Dense) -> jax.Array:
        """conv(fpn[level]). Where the neck's level is its lateral 1x1 conv alone (no top-down
        sum: SAM2's two finest levels), the two 1x1 convs compose into one, applied to the trunk
        feature: the same linear map, without writing and reading the d_model-wide map at the
        finest resolution (about a gigabyte for 16 images at 1024 px). Work that uses only the
        high-res features then drops the neck's own conv at that level."""
        cfg = self.config
        if self.is_initializing() or not is_lateral_only(cfg, level):
            return conv(fpn[level])
        lateral = self.neck.variables["params"][lateral_conv_name(level, len(feats))]
        proj = conv.variables["params"]
        w2 = proj["kernel"].astype(jnp.float32)
        w = lateral["kernel"].astype(jnp.float32) @ w2
        b = lateral["bias"].astype(jnp.float32) @ w2 + proj["bias"].astype(jnp.float32)
        y = jnp.einsum("...D,DF->...F", feats[level].astype(cfg.dtype), w.astype(cfg.dtype))
        return y + b.astype(cfg.dtype)

    def decode(self, image_embed: jax.Array, high_res_feats: Optional[tuple[jax.Array, jax.Array]],
               coords: jax.Array, labels: jax.Array, mask_input: Optional[jax.Array] = None,
               pad: bool = True):
        """Per-prompt features (batch B = prompts) + points float[B, P, 2] (input-frame pixels),
        labels int[B, P] -> (all mask logits float32[B, M, S/4, S/4], iou float32[B, M],
        object score logits float32[B, 1]), before the multimask selection."""
        sparse, dense = self.prompt_encoder(coords, labels, mask_input, pad=pad)
        pe = self.prompt_encoder.dense_pe()
        return self.mask_decoder(image_embed, pe, sparse, dense, high_res_feats)

    def __call__(self, images: jax.Array, coords: jax.Array, labels: jax.Array):
        enc = self.encode_image(images)
        if self.is_initializing():  # create the mask-input convs too
            n = self.config.low_res_size
            self.prompt_encoder.embed_masks(jnp.zeros((1, n, n), jnp.float32))
        return self.decode(enc["image_embed"], enc.get("high_res_feats"), coords, labels)


def init_params(config: Sam2Config, rng: jax.Array) -> dict:
    """Random params (a plain nested dict, logical-axis boxes removed)."""
    model = Sam2(config)
    s = config.image_size
    variables = model.init(rng, jnp.zeros((1, s, s, 3), jnp.float32), jnp.zeros((1, 1, 2), jnp.float32),
                           jnp.ones((1, 1), jnp.int32))
    return nn.meta.unbox(variables["params"])


def abstract_params(config: Sam2Config) -> dict:
    """Shapes/dtypes of the params tree, with logical-axis metadata (no compute)."""
    s = config.image_size
    model = Sam2(config)
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, s, s, 3), jnp.float32),
                                             jnp.zeros((1, 1, 2), jnp.float32),
                                             jnp.ones((1, 1), jnp.int32)))["params"]


def random_params(config: Sam2Config, rng: jax.Array, scale: float = 0.02) -> dict:
    """Params of the right shapes filled with N(0, scale^2) noise (norm scales around 1), made
    without tracing the model's forward: for benchmarks and smoke runs, not for training.

    One draw for the whole tree, cut into the leaves (one RNG op compiles in a moment; one
    per leaf took most of a minute on a CPU)."""
    abstract = nn.meta.unbox(abstract_params(config))
    leaves, treedef = jax.tree.flatten_with_path(abstract)
    sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
    noise = scale * jax.random.normal(rng, (sum(sizes),), jnp.float32)
    offsets = np.cumsum([0] + sizes)
    out = []
    for (path, leaf), start, size in zip(leaves, offsets, sizes):
        value = jax.lax.dynamic_slice_in_dim(noise, int(start), size).reshape(leaf.shape)
        if getattr(path[-1], "key", "") == "scale":
            value = value + 1.0
        out.append(value.astype(leaf.dtype))
    return jax.tree.unflatten(treedef, out)
