"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Einsum alphabet: B prompts, T token count, S image tokens (Y*X), D width, N heads, H head dim.

Per layer l (queries Q = tokens, keys K = image, P_q / P_k their position encodings):
    Q = norm1(self_attn(Q, Q, Q))                        (layer 0: no PE, no residual)
    Q = norm1(Q + self_attn(Q + P_q, Q + P_q, Q))         (layers > 0)
    Q = norm2(Q + attn_t2i(Q + P_q, K + P_k, K))
    Q = norm3(Q + mlp(Q))                                 (relu MLP)
    K = norm4(K + attn_i2t(K + P_k, Q + P_q, Q))
final: Q = norm_final(Q + attn_t2i(Q + P_q, K + P_k, K)).
Cross attentions project to D / attention_downsample_rate internally. Layer 0 differs from the
rest, and SAM2 uses depth 2, so the layers are written out rather than scanned.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import dot_product_attention, logical_param
from segzero_jax.models.layers import constrain
from segzero_jax.models.sam2.common import LayerNorm, Mlp
from segzero_jax.models.sam2.config import Sam2Config

ACT = ("act_batch", "act_length", "act_embed")


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections (D -> N*H -> D)."""

    config: Sam2Config
    downsample_rate: int = 1

    def _proj_in(self, name: str, x: jax.Array, n: int, hd: int) -> jax.Array:
        cfg = self.config
        w = logical_param(self, f"{name}_kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                          (x.shape[-1], n, hd), ("embed", "heads", "head_dim"), cfg.param_dtype)
        b = logical_param(self, f"{name}_bias", nn.initializers.zeros, (n, hd), ("heads", "head_dim"),
                          cfg.param_dtype)
        return jnp.einsum("BTD,DNH->BTNH", x.astype(cfg.dtype), w.astype(cfg.dtype)) + b.astype(cfg.dtype)

    @nn.compact
    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        cfg = self.config
        d = q.shape[-1]
        internal = d // self.downsample_rate
        n = cfg.decoder_num_heads
        if internal % n:
            raise ValueError(f"decoder width {internal} is not divisible by {n} heads")
        hd = internal // n
        o = dot_product_attention(self._proj_in("q_proj", q, n, hd), self._proj_in("k_proj", k, n, hd),
                                  self._proj_in("v_proj", v, n, hd),
                                  implementation=cfg.attention_implementation,
                                  pack_tokens=cfg.attention_pack_tokens)
        w = logical_param(self, "out_proj_kernel", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                          (n, hd, d), ("heads", "head_dim", "embed"), cfg.param_dtype)
        b = logical_param(self, "out_proj_bias", nn.initializers.zeros, (d,), ("embed",), cfg.param_dtype)
        return jnp.einsum("BTNH,NHD->BTD", o, w.astype(cfg.dtype)) + b.astype(cfg.dtype)


class TwoWayAttentionBlock(nn.Module):
    config: Sam2Config
    skip_first_layer_pe: bool = False

    @nn.compact
    def __call__(self, queries, keys, query_pe, key_pe):
        cfg = self.config
        ln = lambda name: LayerNorm(eps=1e-5, dtype=cfg.dtype, param_dtype=cfg.param_dtype, name=name)
        r = cfg.attention_downsample_rate
        if self.skip_first_layer_pe:
            queries = Attention(cfg, name="self_attn")(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + Attention(cfg, name="self_attn")(q, q, queries)
        queries = ln("norm1")(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = ln("norm2")(queries + Attention(cfg, r, name="cross_attn_token_to_image")(q, k, keys))
        mlp = Mlp(cfg.decoder_mlp_dim, queries.shape[-1], 2, activation="relu", dtype=cfg.dtype,
                  param_dtype=cfg.param_dtype, name="mlp")
        queries = ln("norm3")(queries + mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = ln("norm4")(keys + Attention(cfg, r, name="cross_attn_image_to_token")(k, q, queries))
        return constrain(queries, ACT), constrain(keys, ACT)


class TwoWayTransformer(nn.Module):
    """image float[B, S, D], image_pe float[B or 1, S, D], tokens float[B, T, D]
    -> (tokens float[B, T, D], image float[B, S, D])."""

    config: Sam2Config

    @nn.compact
    def __call__(self, image: jax.Array, image_pe: jax.Array, tokens: jax.Array):
        cfg = self.config
        dt = cfg.dtype
        queries, keys = tokens.astype(dt), image.astype(dt)
        query_pe, key_pe = tokens.astype(dt), image_pe.astype(dt)
        for i in range(cfg.decoder_depth):
            queries, keys = TwoWayAttentionBlock(cfg, skip_first_layer_pe=(i == 0),
                                                 name=f"layers_{i}")(queries, keys, query_pe, key_pe)
        q, k = queries + query_pe, keys + key_pe
        attn = Attention(cfg, cfg.attention_downsample_rate, name="final_attn_token_to_image")
        queries = queries + attn(q, k, keys)
        queries = LayerNorm(eps=1e-5, dtype=dt, param_dtype=cfg.param_dtype, name="norm_final_attn")(queries)
        return queries, keys
