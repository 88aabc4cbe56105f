"""Shared building blocks: logical-axis params, RMSNorm, gated MLP and the attention core.

Einsum alphabet: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F mlp width.

Attention core. `dot_product_attention` takes `[B, T, N, H]` queries and `[B, S, K, H]`
keys/values (grouped-query attention when K < N) and routes to one backend:
  * "xla"   - XLA's lowering; runs everywhere (the CPU tests use it);
  * "cudnn" - cuDNN flash attention (GPU, bf16/fp16, head dim <= 128 and a multiple of 8);
  * "auto"  - cuDNN when the backend is a GPU and the inputs qualify, else XLA.
Masks: `is_causal`, per-sequence valid lengths (`query_lengths`, `kv_lengths`, right padding)
and an optional boolean `mask` broadcastable to `[B, N, T, S]` (XLA only).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]

ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "cudnn")


def logical_param(module: nn.Module, name: str, init: Initializer, shape: Sequence[int],
                  axes: Sequence[Optional[str]], dtype: Dtype) -> jax.Array:
    """Creates a param annotated with logical axis names (one per dim)."""
    if len(axes) != len(shape):
        raise ValueError(f"param {name!r}: {len(axes)} axis names for shape {tuple(shape)}")
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * scale, computed in float32 and cast back to x's dtype."""

    eps: float = 1e-6
    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = logical_param(self, "scale", nn.initializers.ones, (x.shape[-1],),
                              (self.axis_name,), self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * scale.astype(jnp.float32)).astype(x.dtype)


def _cudnn_qualifies(q: jax.Array, mask: Optional[jax.Array]) -> bool:
    head_dim = q.shape[-1]
    return (mask is None and q.dtype in (jnp.bfloat16, jnp.float16)
            and head_dim <= 128 and head_dim % 8 == 0)


def resolve_attention_implementation(implementation: str, q: jax.Array,
                                     mask: Optional[jax.Array] = None) -> str:
    """Picks the concrete backend ("xla" or "cudnn") for `implementation`."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    if implementation == "auto":
        on_gpu = jax.default_backend() == "gpu"
        return "cudnn" if on_gpu and _cudnn_qualifies(q, mask) else "xla"
    return implementation


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          is_causal: bool = False,
                          mask: Optional[jax.Array] = None,
                          query_lengths: Optional[jax.Array] = None,
                          kv_lengths: Optional[jax.Array] = None,
                          scale: Optional[float] = None,
                          implementation: str = "auto") -> jax.Array:
    """Softmax attention: q `[B, T, N, H]`, k/v `[B, S, K, H]` -> `[B, T, N, H]` (q's dtype).

    Softmax is accumulated in float32 by both backends.
    """
    impl = resolve_attention_implementation(implementation, q, mask)
    if impl == "cudnn" and mask is not None:
        raise ValueError("the cudnn attention backend takes lengths and is_causal, not a dense mask")
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=is_causal,
        query_seq_lengths=query_lengths, key_value_seq_lengths=kv_lengths,
        implementation=impl)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Looks up an activation by its transformers name (`hidden_act`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


REMAT_POLICIES: dict[str, Optional[Callable[..., Any]]] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything": jax.checkpoint_policies.everything_saveable,
}


def maybe_remat(block: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
    """Wraps `block` in `nn.remat` with the named `jax.checkpoint_policies` entry ("none": no remat)."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is not one of {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=False,
                    static_argnums=static_argnums)


class Einsum(nn.Module):
    """A projection written as one einsum: `y = einsum(equation, x, kernel) (+ bias)`.

    `kernel_shape`/`kernel_axes` name the weight by its dims (e.g. `[D, N, H]` with
    ("embed", "heads", "head_dim")); `bias_shape`/`bias_axes` (optional) give the bias,
    broadcast over the leading dims of the output. Params are stored in `param_dtype`,
    the product runs in `dtype`.
    """

    equation: str
    kernel_shape: Sequence[int]
    kernel_axes: Sequence[Optional[str]]
    bias_shape: Optional[Sequence[int]] = None
    bias_axes: Optional[Sequence[Optional[str]]] = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    kernel_init: Initializer = nn.initializers.normal(0.02)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = logical_param(self, "kernel", self.kernel_init, self.kernel_shape,
                               self.kernel_axes, self.param_dtype)
        y = jnp.einsum(self.equation, x.astype(self.dtype), kernel.astype(self.dtype))
        if self.bias_shape is not None:
            bias = logical_param(self, "bias", nn.initializers.zeros, self.bias_shape,
                                 self.bias_axes, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class GatedMLP(nn.Module):
    """y = down(act(gate(x)) * up(x)); x `[..., D]`, gate/up `[D, F]`, down `[F, D]`."""

    hidden_size: int
    intermediate_size: int
    act: str = "silu"
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    act_axes: Sequence[Optional[str]] = ("act_batch", "act_length", "act_mlp")

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, f = self.hidden_size, self.intermediate_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        up_bias = dict(bias_shape=(f,), bias_axes=("mlp",)) if self.use_bias else {}
        gate = Einsum("...D,DF->...F", (d, f), ("embed", "mlp"), name="gate", **up_bias, **kw)(x)
        up = Einsum("...D,DF->...F", (d, f), ("embed", "mlp"), name="up", **up_bias, **kw)(x)
        h = activation(self.act)(gate) * up
        if h.ndim == len(self.act_axes):
            h = nn.with_logical_constraint(h, tuple(self.act_axes))
        down_bias = dict(bias_shape=(d,), bias_axes=("embed",)) if self.use_bias else {}
        return Einsum("...F,FD->...D", (f, d), ("mlp", "embed"), name="down", **down_bias, **kw)(h)


def rotate_half(x: jax.Array) -> jax.Array:
    """[x1, x2] -> [-x2, x1] over the last dim (the NeoX/HF rotary layout)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x * cos + rotate_half(x) * sin in float32, cast back to x's dtype.

    x `[..., T, N, H]`; cos/sin `[..., T, H]` (broadcast over the heads dim N).
    """
    x32 = x.astype(jnp.float32)
    c, s = cos[..., None, :].astype(jnp.float32), sin[..., None, :].astype(jnp.float32)
    return (x32 * c + rotate_half(x32) * s).astype(x.dtype)


def rotary_inv_freq(dim: int, theta: float) -> jax.Array:
    """inv_freq_i = theta^(-2i/dim), i < dim/2 (float32)."""
    return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))
