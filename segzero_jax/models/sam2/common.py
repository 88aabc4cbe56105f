"""Small building blocks shared by the SAM2 modules.

Einsum alphabet: B batch, Y/X spatial rows/cols, D input width, F output width,
M stacked copies (one MLP per mask token).
Every param carries logical axis names; matmuls run in `dtype`, norms in float32.
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import activation as activation_fn
from segzero_jax.models.layers import logical_param

Dtype = Any


class Dense(nn.Module):
    """y = x W + b over the last axis; W float[D, F] (torch `nn.Linear` / 1x1 conv)."""

    features: int
    axes: tuple[Optional[str], Optional[str]] = ("embed", "mlp")
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        w = logical_param(self, "kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                          self.axes, self.param_dtype)
        b = logical_param(self, "bias", nn.initializers.zeros, (self.features,), (self.axes[1],),
                          self.param_dtype)
        y = jnp.einsum("...D,DF->...F", x.astype(self.dtype), w.astype(self.dtype))
        return y + b.astype(self.dtype)


class LayerNorm(nn.Module):
    """y = (x - mean) / sqrt(var + eps) * scale + bias over the last axis, in float32.

    Matches torch `nn.LayerNorm` (eps 1e-5 default) and SAM's `LayerNorm2d` (eps 1e-6, which
    normalises channels, i.e. the last axis in our channels-last layout).
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = logical_param(self, "scale", nn.initializers.ones, (d,), ("norm",), self.param_dtype)
        bias = logical_param(self, "bias", nn.initializers.zeros, (d,), ("norm",), self.param_dtype)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class Mlp(nn.Module):
    """SAM's `MLP`: `num_layers` Dense layers, `activation` between them, optional sigmoid."""

    hidden_dim: int
    output_dim: int
    num_layers: int
    activation: str = "relu"
    sigmoid_output: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = activation_fn(self.activation)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            in_axis = "embed" if i == 0 else ("mlp" if last else None)
            out_axis = "mlp" if not last else ("embed" if i > 0 else None)
            x = Dense(self.output_dim if last else self.hidden_dim, axes=(in_axis, out_axis),
                      dtype=self.dtype, param_dtype=self.param_dtype, name=f"layers_{i}")(x)
            if not last:
                x = act(x)
        return jax.nn.sigmoid(x) if self.sigmoid_output else x


class StackedMlp(nn.Module):
    """M independent MLPs applied to M tokens at once: x float[B, M, D] -> float[B, M, F].

    Layer l: x = act(einsum("BMD,MDF->BMF", x, W_l) + b_l), no activation after the last.
    Used for the mask decoder's per-mask-token hypernetworks.
    """

    hidden_dim: int
    output_dim: int
    num_layers: int
    activation: str = "relu"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        m = x.shape[-2]
        act = activation_fn(self.activation)
        for i in range(self.num_layers):
            last = i == self.num_layers - 1
            f = self.output_dim if last else self.hidden_dim
            w = logical_param(self, f"layers_{i}_kernel", nn.initializers.lecun_normal(batch_axis=(0,)),
                              (m, x.shape[-1], f), (None, "embed", "mlp"), self.param_dtype)
            b = logical_param(self, f"layers_{i}_bias", nn.initializers.zeros, (m, f), (None, "mlp"),
                              self.param_dtype)
            x = jnp.einsum("...MD,MDF->...MF", x.astype(self.dtype), w.astype(self.dtype))
            x = x + b.astype(self.dtype)
            if not last:
                x = act(x)
        return x


class ConvTranspose2x2(nn.Module):
    """Stride-2, kernel-2 transposed conv (torch `ConvTranspose2d(k=2, s=2)`), channels last.

    Each input pixel writes its own 2x2 output block, so it is one einsum:
    y[B, 2Y+P, 2X+Q, F] = sum_D x[B, Y, X, D] W[D, P, Q, F] + b[F].
    """

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bsz, h, w, d = x.shape
        k = logical_param(self, "kernel", nn.initializers.lecun_normal(in_axis=0, out_axis=3),
                          (d, 2, 2, self.features), ("conv_in", "conv_height", "conv_width",
                                                     "conv_out"), self.param_dtype)
        b = logical_param(self, "bias", nn.initializers.zeros, (self.features,), ("conv_out",),
                          self.param_dtype)
        y = jnp.einsum("BYXD,DPQF->BYPXQF", x.astype(self.dtype), k.astype(self.dtype))
        return y.reshape(bsz, 2 * h, 2 * w, self.features) + b.astype(self.dtype)


class PatchConv(nn.Module):
    """Non-overlapping stride-k, kernel-k conv (torch `Conv2d(k, s=k)`), channels last:
    y[B, Y, X, F] = sum_{P,Q,D} x[B, kY+P, kX+Q, D] W[P, Q, D, F] + b[F]."""

    features: int
    kernel: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bsz, h, w, d = x.shape
        k = self.kernel
        kern = logical_param(self, "kernel", nn.initializers.lecun_normal(in_axis=(0, 1, 2), out_axis=3),
                             (k, k, d, self.features), ("conv_height", "conv_width", "conv_in",
                                                        "conv_out"), self.param_dtype)
        b = logical_param(self, "bias", nn.initializers.zeros, (self.features,), ("conv_out",),
                          self.param_dtype)
        xp = x.reshape(bsz, h // k, k, w // k, k, d).astype(self.dtype)
        y = jnp.einsum("BYPXQD,PQDF->BYXF", xp, kern.astype(self.dtype))
        return y + b.astype(self.dtype)
