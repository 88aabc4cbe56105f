"""Hiera trunk (SAM2's image backbone, "hieradet"), channels last.

Einsum alphabet: B batch (or batch x windows), Y/X rows/cols, D block input width,
E block output width, C the q/k/v triple, N heads, H head dim, F mlp width.

    x = PatchEmbed_{7x7/4}(image) + bicubic(pos_embed -> Y, X) + tile(pos_embed_window)
    for each block:   (pre-norm, windowed or global attention, optional 2x2 q max-pooling)
        x' = norm1(x)
        s  = maxpool(proj(x')) if the width changes else x
        x  = s + unwindow(attn(window(x')))          attn pools q inside each window
        x  = x + mlp(norm2(x))
    outputs: x at the end of every stage, float[B, Y_s, X_s, E_s].

Windows are zero-padded to a multiple of the window size (after norm1) and padded tokens take
part in attention, exactly as in the reference. Runs of identical blocks (same widths, window,
no pooling) are one `nn.scan` with params stacked on a leading "layers" axis (`segment_j`); a
block that changes width or pools is applied on its own. With `config.scan_blocks=False` every
block is a module of its own (`block_i`), the frozen model's inference layout.

Layout planning (runs of identical blocks, the window or map layout x crosses each run in)
lives in `hiera_layout`; this module holds the model: attention -> block -> trunk.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import constrain, dot_product_attention, flat_product, logical_param, maybe_remat
from segzero_jax.models.sam2.common import Dense, LayerNorm, Mlp
from segzero_jax.models.sam2.config import BlockSpec, Sam2Config
from segzero_jax.models.sam2.hiera_layout import (block_name, is_scanned, layout_plan, pools_within_windows,
                                                  segment_name, to_layout, window_partition, window_unpartition)
from segzero_jax.models.sam2.resize import resize_hwc

ACT = ("act_batch", None, None, "act_embed")


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """`MaxPool2d(2, 2)` (floor mode) on float[B, Y, X, ...]."""
    h, w = x.shape[1] // 2, x.shape[2] // 2
    x = x[:, : 2 * h, : 2 * w]
    x = x.reshape(x.shape[0], h, 2, w, 2, *x.shape[3:])
    return jnp.max(x, axis=(2, 4))


class MultiScaleAttention(nn.Module):
    """Attention over one window float[B, Y, X, D] -> float[B, Y', X', E] (Y' = Y/2 if pooled);
    `row_group` consecutive rows of x form one sequence (a global block over window layout)."""

    spec: BlockSpec
    config: Sam2Config
    row_group: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, spec = self.config, self.spec
        n, hd = spec.num_heads, spec.dim_out // spec.num_heads
        # One matmul per projection (`flat_product`: its bias in cuBLAS's epilogue), each
        # written straight in the [B, Y, X, N, H] layout the attention call takes: a fused
        # [3, ...] product costs a transpose and a split of the whole q/k/v tensor (about an
        # eighth of SAM2-Large's time on an H100). The reference's fused qkv Linear is three
        # params here (the converter splits it): in the per-block layout, slicing a fused
        # weight costs a copy kernel per projection and call.
        x = x.astype(cfg.dtype)

        def project(part: str) -> jax.Array:
            w = logical_param(self, f"{part}_kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                              (spec.dim, n, hd), ("embed", "heads", "head_dim"), cfg.param_dtype)
            b = logical_param(self, f"{part}_bias", nn.initializers.zeros, (n, hd), ("heads", "head_dim"),
                              cfg.param_dtype)
            return flat_product(x, w, b, cfg.dtype)

        q, k, v = project("q"), project("k"), project("v")
        if spec.q_pool:
            q = max_pool_2x2(q)
        b, qy, qx = q.shape[:3]
        flat = lambda t: t.reshape(t.shape[0] // self.row_group, -1, n, hd)
        o = dot_product_attention(flat(q), flat(k), flat(v),
                                  implementation=cfg.attention_implementation,
                                  pack_tokens=cfg.attention_pack_tokens)
        o = o.reshape(b, qy, qx, n, hd)
        w_o = logical_param(self, "proj_kernel", nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                            (n, hd, spec.dim_out), ("heads", "head_dim", "embed"), cfg.param_dtype)
        b_o = logical_param(self, "proj_bias", nn.initializers.zeros, (spec.dim_out,), ("embed",),
                            cfg.param_dtype)
        return jnp.einsum("BYXNH,NHE->BYXE", o, w_o.astype(cfg.dtype)) + b_o.astype(cfg.dtype)


class MultiScaleBlock(nn.Module):
    """One Hiera block: float[B, Y, X, D] -> float[B, Y', X', E] (see the module docstring).

    `windowed`: x arrives partitioned into the block's windows, float[B * nY * nX, ws, ws, D]
    with no padding, and leaves in the same layout (windows of ws/2 after q-pooling).
    `row_group`: a global block's x arrives in a window layout with this many windows per image,
    which its attention reads side by side as one sequence.
    """

    spec: BlockSpec
    config: Sam2Config
    windowed: bool = False
    row_group: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, spec = self.config, self.spec
        ws = spec.window_size
        if self.windowed and not (ws > 0 and x.shape[1:3] == (ws, ws)
                                  and (not spec.q_pool or pools_within_windows(ws, cfg.q_stride))):
            raise ValueError(f"MultiScaleBlock: windowed input {x.shape} does not fit the block {spec}")
        kw = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        shortcut = x
        x = LayerNorm(eps=1e-6, name="norm1", **kw)(x)
        # Both branches of the residual carry the activations' batch sharding (here and at the
        # sum below): without these constraints XLA's SPMD partitioner (jax 0.10) computed wrong
        # values for a pooling block with tensor-sharded params on a (2, 2, 2) mesh
        # (tests/models/sam2 holds the sharded trunk to the unsharded one).
        if spec.dim != spec.dim_out:
            shortcut = Dense(spec.dim_out, axes=("embed", "mlp"), name="proj", **kw)(x)
            if spec.q_pool:
                shortcut = max_pool_2x2(shortcut)
            shortcut = constrain(shortcut, ACT)
        h, w = x.shape[1:3]
        if ws > 0 and not self.windowed:
            x, pad_hw = window_partition(x, ws)
        if self.row_group > 1 and (ws > 0 or spec.q_pool or x.shape[0] % self.row_group):
            raise ValueError(f"MultiScaleBlock: {x.shape[0]} rows do not group by {self.row_group} "
                             f"for the global block {spec}")
        x = MultiScaleAttention(spec, cfg, self.row_group, name="attn")(x)
        if spec.q_pool:
            ws = ws // cfg.q_stride[0]
            h, w = shortcut.shape[1:3]
            pad_hw = (h + (-h) % ws, w + (-w) % ws) if ws > 0 else (h, w)
        if spec.window_size > 0 and not self.windowed:
            x = window_unpartition(x, ws, pad_hw, (h, w))
        x = shortcut + constrain(x, ACT)
        y = LayerNorm(eps=1e-6, name="norm2", **kw)(x)
        x = x + Mlp(int(spec.dim_out * cfg.mlp_ratio), spec.dim_out, 2, activation=cfg.trunk_activation(),
                    name="mlp", **kw)(y)
        return constrain(x, ACT)


class _ScannedBlock(MultiScaleBlock):
    """`MultiScaleBlock` with the (carry, output) signature `nn.scan` wants."""

    @nn.compact
    def __call__(self, x: jax.Array, _: Any = None) -> tuple[jax.Array, None]:
        return super().__call__(x), None


class Hiera(nn.Module):
    """images float[B, S, S, 3] -> per-stage features [float[B, S/4/2^s, S/4/2^s, E_s]]."""

    config: Sam2Config

    def _pos_embed(self, h: int, w: int) -> jax.Array:
        cfg = self.config
        bh, bw = cfg.window_pos_embed_bkg_spatial_size
        ws = cfg.window_spec[0]
        bkg = logical_param(self, "pos_embed", nn.initializers.normal(0.02), (bh, bw, cfg.embed_dim),
                            (None, None, "embed"), cfg.param_dtype)
        win = logical_param(self, "pos_embed_window", nn.initializers.normal(0.02),
                            (ws, ws, cfg.embed_dim), (None, None, "embed"), cfg.param_dtype)
        pos = resize_hwc(bkg, (h, w), "bicubic")
        return pos + jnp.tile(win.astype(jnp.float32), (h // ws, w // ws, 1))

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        cfg = self.config
        kern = logical_param(self, "patch_embed_kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                             (7, 7, images.shape[-1], cfg.embed_dim),
                             ("conv_height", "conv_width", "conv_in", "conv_out"), cfg.param_dtype)
        bias = logical_param(self, "patch_embed_bias", nn.initializers.zeros, (cfg.embed_dim,),
                             ("conv_out",), cfg.param_dtype)
        x = jax.lax.conv_general_dilated(images.astype(cfg.dtype), kern.astype(cfg.dtype),
                                         window_strides=(4, 4), padding=((3, 3), (3, 3)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x + bias.astype(cfg.dtype)
        x = (x + self._pos_embed(x.shape[1], x.shape[2])).astype(cfg.dtype)
        x = constrain(x, ACT)

        outputs = []
        if x.shape[1:3] != (cfg.image_size // 4,) * 2:
            raise ValueError(f"Hiera: images of {images.shape[1:3]}, the config's image_size is {cfg.image_size}")
        layout = 0
        for j, run in enumerate(layout_plan(cfg)):
            spec = run.spec
            if run.layout != layout:
                x = constrain(to_layout(x, run.hw, layout, run.layout), ACT)
            windowed = run.layout > 0 and spec.window_size > 0
            # a global block over window layout reads each image's windows side by side
            group = (run.hw[0] // run.layout) * (run.hw[1] // run.layout) if run.layout and not windowed else 1
            if cfg.scan_blocks and is_scanned(spec):
                block_cls = maybe_remat(_ScannedBlock, cfg.remat_policy)
                stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                                length=run.count, metadata_params={nn.PARTITION_NAME: "layers"})
                x, _ = stack(spec, cfg, windowed, group, name=segment_name(j))(x, None)
            else:   # blocks applied one by one, outside a scan
                block_cls = maybe_remat(MultiScaleBlock, cfg.remat_policy, prevent_cse=True)
                names = ([segment_name(j)] if cfg.scan_blocks
                         else [block_name(i) for i in range(run.start, run.start + run.count)])
                for name in names:
                    x = block_cls(spec, cfg, windowed, group, name=name)(x)
            layout = run.out_layout
            if run.start + run.count - 1 in cfg.stage_ends:
                outputs.append(constrain(to_layout(x, run.out_hw, layout, 0), ACT))
        return outputs
