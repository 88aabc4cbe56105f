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
