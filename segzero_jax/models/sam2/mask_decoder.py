"""SAM2 mask decoder: output tokens + prompt tokens x image -> mask logits, IoU, object score.

Einsum alphabet: B prompts, M mask tokens, Y/X grid, C upscaled channels, D width.

    tokens = [obj_score_token?, iou_token, mask_tokens(M)] ++ sparse prompts
    src    = image_embed + dense prompt;  Q, K = TwoWayTransformer(src, dense_pe, tokens)
    up     = gelu(conv_t2(gelu(LN(conv_t1(K) + feat_s1))) + feat_s0)     float[B, 4Y, 4X, D/8]
    masks  = einsum("BMC,BYXC->BMYX", hyper_mlps(Q_mask_tokens), up)        (4x grid)
    iou    = iou_head(Q_iou) (sigmoid if configured);  obj = obj_head(Q_obj) (or 10 if absent)
Selection: multimask -> tokens 1..M-1; single -> token 0, or (dynamic_multimask_via_stability)
the best multimask output when token 0's stability score
|logits > delta| / |logits > -delta| is below the threshold.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import gelu, logical_param
from segzero_jax.models.sam2.common import ConvTranspose2x2, Dense, LayerNorm, Mlp, StackedMlp
from segzero_jax.models.sam2.config import Sam2Config
from segzero_jax.models.sam2.two_way_transformer import TwoWayTransformer


def select_masks(config: Sam2Config, masks: jax.Array, iou: jax.Array, multimask_output: bool):
    """masks float[B, M, h, w], iou float[B, M] -> the reference decoder's output selection."""
    if multimask_output:
        return masks[:, 1:], iou[:, 1:]
    if not config.dynamic_multimask_via_stability:
        return masks[:, :1], iou[:, :1]
    multi, multi_iou = masks[:, 1:], iou[:, 1:]
    best = jnp.argmax(multi_iou, axis=-1)
    best_masks = jnp.take_along_axis(multi, best[:, None, None, None], axis=1)
    best_iou = jnp.take_along_axis(multi_iou, best[:, None], axis=1)
    single, single_iou = masks[:, :1], iou[:, :1]
    delta = config.dynamic_multimask_stability_delta
    flat = single.reshape(single.shape[0], 1, -1)
    area_i = jnp.sum(flat > delta, axis=-1).astype(jnp.float32)
    area_u = jnp.sum(flat > -delta, axis=-1).astype(jnp.float32)
    stability = jnp.where(area_u > 0, area_i / jnp.maximum(area_u, 1.0), 1.0)
    stable = stability >= config.dynamic_multimask_stability_thresh
    return (jnp.where(stable[..., None, None], single, best_masks),
            jnp.where(stable, single_iou, best_iou))


class MaskDecoder(nn.Module):
    config: Sam2Config

    @nn.compact
    def __call__(self, image_embed: jax.Array, image_pe: jax.Array, sparse: jax.Array,
                 dense: jax.Array, high_res: Optional[tuple[jax.Array, jax.Array]] = None):
        """image_embed float[B, Y, X, D], image_pe float[Y, X, D], sparse float[B, P, D],
        dense float[B or 1, Y, X, D], high_res (feat_s0 float[B, 4Y, 4X, D/8],
        feat_s1 float[B, 2Y, 2X, D/4]) -> (all mask logits float32[B, M, 4Y, 4X],
        iou float32[B, M], object score logits float32[B, 1])."""
        cfg = self.config
        d, m, dt = cfg.d_model, cfg.num_mask_tokens, cfg.dtype
        kw = dict(dtype=dt, param_dtype=cfg.param_dtype)
        p = lambda name, shape, axes: logical_param(self, name, nn.initializers.normal(1.0), shape, axes,
                                                    cfg.param_dtype)
        out_tokens = [p("iou_token", (1, d), (None, "embed")), p("mask_tokens", (m, d), (None, "embed"))]
        if cfg.pred_obj_scores:
            out_tokens.insert(0, p("obj_score_token", (1, d), (None, "embed")))
        s = 1 if cfg.pred_obj_scores else 0
        out_tokens = jnp.concatenate(out_tokens, axis=0).astype(jnp.float32)
        b = sparse.shape[0]
        tokens = jnp.concatenate([jnp.broadcast_to(out_tokens, (b, *out_tokens.shape)),
                                  sparse.astype(jnp.float32)], axis=1)
        src = image_embed.astype(jnp.float32) + dense.astype(jnp.float32)
        _, h, w, _ = src.shape
        hs, keys = TwoWayTransformer(cfg, name="transformer")(
            src.reshape(b, h * w, d), image_pe.reshape(1, h * w, d), tokens)
        iou_out = hs[:, s]
        mask_out = hs[:, s + 1: s + 1 + m]

        x = keys.reshape(b, h, w, d)
        x = ConvTranspose2x2(d // 4, name="upscale_conv1", **kw)(x)
        if cfg.use_high_res_features:
            if high_res is None:
                raise ValueError("MaskDecoder: this config uses high-res features; pass (feat_s0, feat_s1)")
            feat_s0, feat_s1 = high_res
            x = gelu(LayerNorm(eps=1e-6, name="upscale_norm", **kw)(x + feat_s1.astype(dt)))
            x = gelu(ConvTranspose2x2(d // 8, name="upscale_conv2", **kw)(x) + feat_s0.astype(dt))
        else:
            x = gelu(LayerNorm(eps=1e-6, name="upscale_norm", **kw)(x))
            x = gelu(ConvTranspose2x2(d // 8, name="upscale_conv2", **kw)(x))

        hyper = StackedMlp(d, d // 8, 3, name="output_hypernetworks", **kw)(mask_out)
        masks = jnp.einsum("BMC,BYXC->BMYX", hyper.astype(dt), x.astype(dt)).astype(jnp.float32)
        iou = Mlp(cfg.iou_head_hidden_dim, m, cfg.iou_head_depth, sigmoid_output=cfg.iou_prediction_use_sigmoid,
                  name="iou_prediction_head", **kw)(iou_out).astype(jnp.float32)
        if cfg.pred_obj_scores:
            if cfg.pred_obj_scores_mlp:
                head = Mlp(d, 1, 3, name="pred_obj_score_head", **kw)
            else:
                head = Dense(1, axes=("embed", None), name="pred_obj_score_head", **kw)
            obj = head(hs[:, 0]).astype(jnp.float32)
        else:
            obj = jnp.full((b, 1), 10.0, jnp.float32)
        return masks, iou, obj
