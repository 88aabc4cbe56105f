"""Qwen2.5-VL vision tower: patch embedding, window/full attention blocks (scanned), 2x2 merger.

Einsum alphabet: I image slots (a batch of equal-grid images, or 1 slot holding all images
concatenated; see vision_layout.py), L patch tokens per slot, P patch pixels
(C*Tp*patch*patch = 1176), D vision width, C the three projections q/k/v, N heads, H head
dim, F mlp width, G attention segments (windows or frames), S tokens per segment, E merged
width (merge^2 * D), O output width (= LM width).

  x = patch_embed(pixels) [I, L, D] -> window order -> depth x block -> merger -> [I * L/4, O]
  block: x += proj(attn(rope(qkv(norm1(x))))); x += mlp(norm2(x))   (RMSNorm eps 1e-6)
Blocks listed in `fullatt_block_indexes` attend within a whole frame, the others within
their window; both are computed on a padded `[G, S]` segment layout with per-segment
lengths (a form cuDNN supports), chosen per layer with `lax.cond` inside the layer scan.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import (Einsum, GatedMLP, RMSNorm, activation, apply_rotary, constrain,
                                       dot_product_attention, flat_product, logical_param,
                                       maybe_remat)
from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from segzero_jax.models.qwen2_5_vl.rope import vision_cos_sin

Layout = dict[str, jax.Array]


def segment_attention(qkv, cos, sin, gather, lengths, scatter, impl: str):
    """Attention inside segments: qkv `[I, L, N, C=3, H]`, cos/sin `[L, H]`, gather `[G, S]` ->
    `[I, L, N, H]`. Slicing q, k or v out of qkv, gathering it into segments and (q, k) the
    rotary make one pass over each, where a slice, a rotary pass and a gather made three."""
    i, (g, s), n, h = qkv.shape[0], gather.shape, qkv.shape[2], qkv.shape[4]
    seg = lambda c: qkv[:, :, :, c][:, gather]                             # [I, G, S, N, H]
    rope = lambda t: apply_rotary(t, cos[gather], sin[gather])             # cos/sin [G, S, H]
    flat = lambda t: t.reshape(i * g, s, n, h)
    out = dot_product_attention(flat(rope(seg(0))), flat(rope(seg(1))), flat(seg(2)),
                                kv_lengths=jnp.tile(lengths, i), implementation=impl)
    # Back to token order with one index over all images' rows, so the result comes out
    # image-major (a per-image index gathers token-major, and a transpose followed).
    rows = (jnp.arange(i, dtype=scatter.dtype)[:, None] * (g * s) + scatter).reshape(-1)
    return out.reshape(i * g * s, n, h)[rows].reshape(i, -1, n, h)


class QKVProjection(nn.Module):
    """x `[I, L, D]` -> qkv `[I, L, N, C=3, H]` from the checkpoint's fused weight `[D, C, N, H]`
    and bias `[C, N, H]`, as one `flat_product` (bias in cuBLAS's epilogue) over the weight
    reordered to `[D, N, C, H]`: heads are the outer factor of the columns, so tensor-sharded
    heads keep the product's sharding (a `[D, C*N*H]` flattening would not). In the scanned
    layer stack the reordering rides in the copy of the layer's weights out of the stack."""

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        n, h, d = self.num_heads, self.head_dim, x.shape[-1]
        kernel = logical_param(self, "kernel", nn.initializers.normal(0.02), (d, 3, n, h),
                               ("embed", None, "heads", "head_dim"), self.param_dtype)
        bias = logical_param(self, "bias", nn.initializers.zeros, (3, n, h), (None, "heads", "head_dim"),
                             self.param_dtype)
        return flat_product(x, kernel.transpose(0, 2, 1, 3), bias.transpose(1, 0, 2), self.dtype)


class VisionBlock(nn.Module):
    """One pre-norm ViT block; `is_full` (bool scalar) picks frame or window attention."""

    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, x, cos, sin, layout: Layout, is_full):
        c, v = self.config, self.config.vision
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        n, h, d = v.num_heads, v.head_dim, v.hidden_size
        y = RMSNorm(v.rms_norm_eps, c.weight_dtype, name="norm1")(x)
        qkv = QKVProjection(n, h, name="qkv", **kw)(y)
        impl = c.attention_impl

        def full(args):
            return segment_attention(*args, layout["full_gather"], layout["full_lengths"],
                                     layout["full_scatter"], impl)

        def window(args):
            return segment_attention(*args, layout["window_gather"], layout["window_lengths"],
                                     layout["window_scatter"], impl)

        o = jax.lax.cond(is_full, full, window, (qkv, cos, sin))
        o = constrain(o, ("act_batch", "act_length", "act_heads", None))
        x = x + Einsum("ILNH,NHD->ILD", (n, h, d), ("heads", "head_dim", "embed"), (d,), ("embed",),
                       name="proj", **kw)(o)
        y = RMSNorm(v.rms_norm_eps, c.weight_dtype, name="norm2")(x)
        x = x + GatedMLP(d, v.intermediate_size, v.hidden_act, use_bias=True,
                         act_axes=("act_batch", "act_length", "act_mlp"), name="mlp", **kw)(y)
        return constrain(x, ("act_batch", "act_length", "act_embed"))


class _ScanBody(nn.Module):
    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, x, is_full, cos, sin, layout):
        block = maybe_remat(VisionBlock, self.config.remat_policy)
        return block(self.config, name="block")(x, cos, sin, layout, is_full), None


class PatchMerger(nn.Module):
    """RMSNorm, group merge^2 neighbours `[I, L, D] -> [I, L/4, E]`, Linear-GELU-Linear to `[I, L/4, O]`."""

    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, x):
        c, v = self.config, self.config.vision
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        e = v.hidden_size * v.spatial_merge_size ** 2
        x = RMSNorm(v.rms_norm_eps, c.weight_dtype, name="norm")(x).reshape(x.shape[0], -1, e)
        x = Einsum("ILE,EF->ILF", (e, e), ("mlp", "embed"), (e,), ("embed",), name="fc1", **kw)(x)
        x = activation("gelu")(x)
        return Einsum("ILE,EO->ILO", (e, v.out_hidden_size), ("mlp", "embed"), (v.out_hidden_size,),
                      ("embed",), name="fc2", **kw)(x)


class VisionTower(nn.Module):
    """pixel_values float32[L, P] + layout (see vision_layout.py) -> image features [L/4, O].

    Output rows follow the processor's order of merged tokens (image by image), i.e. the
    order of the `<|image_pad|>` tokens in the prompt.
    """

    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, pixel_values: jax.Array, layout: Layout) -> jax.Array:
        c, v = self.config, self.config.vision
        if pixel_values.ndim != 2 or pixel_values.shape[1] != v.patch_dim:
            raise ValueError(f"pixel_values must be [num_patches, {v.patch_dim}], got {pixel_values.shape}")
        slots, per_slot = layout["image_slots"].shape[0], layout["patch_perm"].shape[0]
        if pixel_values.shape[0] != slots * per_slot:
            raise ValueError(f"pixel_values has {pixel_values.shape[0]} patches but image_grid_thw "
                             f"describes {slots * per_slot}")
        pixels = constrain(pixel_values.reshape(slots, per_slot, v.patch_dim),
                                            ("act_batch", "act_length", None))
        x = Einsum("ILP,PD->ILD", (v.patch_dim, v.hidden_size), ("conv_in", "embed"),
                   name="patch_embed", dtype=c.compute_dtype, param_dtype=c.weight_dtype)(pixels)
        x = constrain(x[:, layout["patch_perm"]], ("act_batch", "act_length", "act_embed"))
        cos, sin = vision_cos_sin(layout["pos_hw"], v.head_dim, v.rope_theta)
        is_full = jnp.asarray([i in v.fullatt_block_indexes for i in range(v.depth)])
        blocks = nn.scan(_ScanBody, variable_axes={"params": 0}, split_rngs={"params": True},
                         in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=v.depth,
                         metadata_params={nn.PARTITION_NAME: "layers"})
        x, _ = blocks(c, name="blocks")(x, is_full, cos, sin, layout)
        x = PatchMerger(c, name="merger")(x)[:, layout["merge_inverse"]]
        return x.reshape(-1, x.shape[-1])


def layout_arrays(layout: dict[str, Any]) -> Layout:
    """numpy layout -> int32 jax arrays (what the tower takes)."""
    return {k: jnp.asarray(val, jnp.int32) for k, val in layout.items()}
