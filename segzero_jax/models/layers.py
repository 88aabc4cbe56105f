"""Shared building blocks: logical-axis params, RMSNorm, gated MLP and the attention core.

Einsum alphabet: B batch, T query length, S key length, D model width, N query heads,
K key/value heads, H head dim, F mlp width.

Attention core. `dot_product_attention` takes `[B, T, N, H]` queries and `[B, S, K, H]`
keys/values (grouped-query attention when K < N) and routes to one backend:
  * "xla"   - XLA's lowering; runs everywhere (the CPU tests use it);
  * "cudnn" - cuDNN flash attention (GPU, bf16/fp16, head dim <= 128 and a multiple of 8);
  * "tpu_flash" - the Pallas TPU flash-attention kernel (head dim <= 128 or a multiple of
    128): sequences padded to multiples of 128, lengths as segment ids, kv heads repeated
    for grouped queries; runs on CPU under `pltpu.force_tpu_interpret_mode()` for tests;
  * "cudnn_packed" - cuDNN over short independent sequences laid side by side: `g` of them
    (consecutive batch rows) form one row of up to `pack_tokens` positions, and a block-diagonal
    bias keeps every query to its own sequence's keys (exactly the unpacked result: the other
    keys' softmax weights underflow to zero);
  * "auto"  - on a GPU cuDNN, or cuDNN packed where queries and keys are both at most 32
    positions long (XLA where they cannot be packed); tpu_flash on a TPU for queries of >= 128
    positions; else XLA;
  * "tpu_auto" / "gpu_auto" - the TPU's / the GPU's "auto" choice on any backend (ahead-of-time
    compiles for a TPU or a GPU from another host).
Masks: `is_causal`, per-sequence valid lengths (`query_lengths`, `kv_lengths`, right padding)
and an optional boolean `mask` broadcastable to `[B, N, T, S]` (XLA only). Queries past their
length produce finite garbage in every backend.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec


def constrain(x: jax.Array, axes: Sequence[Optional[str]]) -> jax.Array:
    """The one activation-constraint helper: `axes` names each dim of `x` by logical axis
    ("act_batch", "act_length", ...; None leaves a dim free). A no-op outside a mesh + logical
    rules context, so model code calls it unconditionally."""
    return nn.with_logical_constraint(x, tuple(axes))

Dtype = Any
Initializer = Callable[..., jax.Array]

# Choices resolved by a backend: "auto" by the one tracing the model, the others by the one named
# (compiling for a TPU or GPU from another host). Attention and SAM2's trunk GELU share them.
AUTO_CHOICES = ("auto", "tpu_auto", "gpu_auto")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "cudnn_packed", "tpu_flash", *AUTO_CHOICES)
TPU_BLOCK = 128  # the Pallas TPU kernel's sequence block (keys: a multiple of the 128 lanes)
# On a GPU "auto" takes plain cuDNN once queries or keys reach this many positions. cuDNN's
# flash kernel works on 64 x 128 tiles: on SAM2-Large's 16-token windows (16,384 windows x 4
# heads, 16 images) it spent 1.37 ms per stage-2 block on an H100, about 1 TFLOP/s; with the
# pooled block over such windows that was 7.6% of the model's time for 0.1% of its FLOPs.
# Shorter sequences are packed (below) or, where they cannot be, left to XLA, whose batched
# matmuls need q, k, v and the output transposed to a heads-major layout: four passes over the
# block's activations.
CUDNN_MIN_TOKENS = 33
# "auto" on a GPU packs sequences shorter than CUDNN_MIN_TOKENS into rows of at most this many
# positions (one 128-key tile of cuDNN's kernel): SAM2-Large's 16-token windows go 8 to a row.
# The bias multiplies the attention FLOPs by the pack factor, which is cheap at these lengths
# (SAM2-Large: 0.19 TFLOP more, of 29.3 per 16 images, in the H100 census of `experiments.perf.aot_compile
# --census`), and q, k, v and the output stay in the projections' token-major layout.
PACK_TOKENS = 128


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


def _cudnn_qualifies(q: jax.Array, mask: Optional[jax.Array], kv_length: Optional[int]) -> bool:
    head_dim = q.shape[-1]
    longest = max(q.shape[1], q.shape[1] if kv_length is None else kv_length)
    return (mask is None and q.dtype in (jnp.bfloat16, jnp.float16)
            and head_dim <= 128 and head_dim % 8 == 0 and longest >= CUDNN_MIN_TOKENS)


def auto_backend(choice: str) -> str:
    """The backend an `AUTO_CHOICES` entry resolves for: JAX's default backend for "auto"."""
    if choice not in AUTO_CHOICES:
        raise ValueError(f"{choice!r} is not one of {AUTO_CHOICES}")
    return jax.default_backend() if choice == "auto" else choice.removesuffix("_auto")


def pack_factor(batch: int, t: int, s: int, pack_tokens: int = PACK_TOKENS) -> int:
    """How many `[t queries, s keys]` sequences "cudnn_packed" lays side by side: the largest
    divisor of `batch` that keeps a row within `pack_tokens` positions (1: no packing)."""
    most = max(1, pack_tokens // max(t, s, 1))
    return max(g for g in range(1, min(most, batch) + 1) if batch % g == 0)


def resolve_attention_implementation(implementation: str, q: jax.Array,
                                     mask: Optional[jax.Array] = None,
                                     kv_length: Optional[int] = None, *,
                                     lengths_or_causal: bool = False,
                                     pack_tokens: int = PACK_TOKENS) -> str:
    """Picks the concrete backend ("xla", "cudnn", "cudnn_packed" or "tpu_flash") for
    `implementation`; q is `[B, T, N, H]`, kv_length the keys' S (default T);
    `lengths_or_causal`: the call has valid lengths or a causal mask (no packing then)."""
    if implementation not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {implementation!r} is not one of "
                         f"{ATTENTION_IMPLEMENTATIONS}")
    if implementation not in AUTO_CHOICES:
        return implementation
    backend = auto_backend(implementation)
    if backend == "gpu" and _cudnn_qualifies(q, mask, kv_length):
        return "cudnn"
    if backend == "gpu" and not lengths_or_causal:
        t = q.shape[1]
        s = t if kv_length is None else kv_length
        g = pack_factor(q.shape[0], t, s, pack_tokens)
        if g > 1 and _cudnn_qualifies(q, mask, g * max(t, s)):
            return "cudnn_packed"
    if backend == "tpu" and _tpu_flash_qualifies(q, mask):
        return "tpu_flash"
    return "xla"


def _tpu_flash_qualifies(q: jax.Array, mask: Optional[jax.Array]) -> bool:
    """Long queries only: below one 128-row block the padding and the repeated kv heads cost
    more than XLA's small score matrix (decode steps, SAM2's small windows and prompt tokens)."""
    head_dim = q.shape[-1]
    return mask is None and q.shape[1] >= TPU_BLOCK and (head_dim <= 128 or head_dim % 128 == 0)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def tpu_flash_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, is_causal: bool,
                        query_lengths: Optional[jax.Array], kv_lengths: Optional[jax.Array],
                        scale: Optional[float]) -> jax.Array:
    """The Pallas TPU flash kernel in this module's conventions (see the module docstring)."""
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_fa

    b, t, n, h = q.shape
    s, kh = k.shape[1], k.shape[2]
    if n % kh:
        raise ValueError(f"{n} query heads do not group over {kh} kv heads")
    tp, sp = _round_up(t, TPU_BLOCK), _round_up(s, TPU_BLOCK)
    if is_causal and t != s:
        raise ValueError(f"causal tpu_flash attention needs equal query and key lengths, got {t} and {s}")
    to_bnth = lambda x, length: jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)
    qp = to_bnth(q, tp)
    kp = to_bnth(jnp.repeat(k, n // kh, axis=2), sp)
    vp = to_bnth(jnp.repeat(v, n // kh, axis=2), sp)
    # Segment ids: real keys 1, padding 0; queries 1, so a query sees exactly the real keys.
    kv_len = jnp.full((b,), s, jnp.int32) if kv_lengths is None else kv_lengths.astype(jnp.int32)
    kv_seg = (jnp.arange(sp)[None, :] < kv_len[:, None]).astype(jnp.int32)
    q_seg = jnp.ones((b, tp), jnp.int32)
    del query_lengths  # queries past their length are garbage in every backend
    block = lambda size: min(TPU_BLOCK, size)
    sizes = tpu_fa.BlockSizes(block_q=block(tp), block_k_major=block(sp), block_k=block(sp), block_b=1,
                              block_q_major_dkv=block(tp), block_k_major_dkv=block(sp),
                              block_k_dkv=block(sp), block_q_dkv=block(tp), block_k_major_dq=block(sp),
                              block_k_dq=block(sp), block_q_dq=block(tp))
    sm_scale = float(h ** -0.5 if scale is None else scale)

    def kernel(qp, kp, vp, q_seg, kv_seg):
        return tpu_fa.flash_attention(qp, kp, vp, segment_ids=tpu_fa.SegmentIds(q=q_seg, kv=kv_seg),
                                      causal=is_causal, sm_scale=sm_scale, block_sizes=sizes)

    out = _shard_over_batch_and_heads(kernel, b, n)(qp, kp, vp, q_seg, kv_seg)
    return out.transpose(0, 2, 1, 3)[:, :t].astype(q.dtype)


def _shard_over_batch_and_heads(kernel: Callable[..., jax.Array], batch: int, heads: int):
    """Runs a Pallas kernel on `[B, N, T, H]` q/k/v + `[B, T]` ids per device under the current
    mesh: Mosaic kernels are not partitioned by XLA, so the kernel goes inside a shard_map over
    the mesh axes of "act_batch" and "act_heads" (the logical rules in context; axes that do
    not divide a dim are left out of it). Without a mesh the kernel runs as it is."""
    from segzero_jax.parallel.sharding import fit_spec

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel
    bx, hx = fit_spec(nn.logical_to_mesh_axes(("act_batch", "act_heads")), (batch, heads), mesh)
    qkv, ids = PartitionSpec(bx, hx, None, None), PartitionSpec(bx, None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(qkv, qkv, qkv, ids, ids), out_specs=qkv, check_vma=False)


def packed_attention(q: jax.Array, k: jax.Array, v: jax.Array, group: int, *,
                     scale: Optional[float] = None, implementation: str = "cudnn") -> jax.Array:
    """Attention over `group` consecutive batch rows at once: q `[B, T, N, H]`, k/v `[B, S, K, H]`
    become `[B/group, group*T, ...]` rows (a reshape, no copy) and a block-diagonal bias keeps
    each query on its own row's keys. Equal to the unpacked attention: a masked key's logit sits
    2^40 (float16: 2^15) below the rest, so its softmax weight is exactly 0. Not the dtype's
    extreme: cuDNN scales logits by log2(e) for exp2, which would overflow float32 to -inf there
    (JAX's cuDNN path keeps its masks at the same values)."""
    b, t = q.shape[:2]
    s = k.shape[1]
    if b % group:
        raise ValueError(f"packed attention: {b} sequences do not split into groups of {group}")
    rows = lambda x, length: x.reshape(b // group, group * length, *x.shape[2:])
    same = (jnp.arange(group * t) // t)[:, None] == (jnp.arange(group * s) // s)[None, :]
    masked = -(2.0 ** 15) if q.dtype == jnp.float16 else -(2.0 ** 40)
    bias = jnp.where(same, 0.0, masked).astype(q.dtype)[None, None]
    out = jax.nn.dot_product_attention(rows(q, t), rows(k, s), rows(v, s), bias=bias, scale=scale,
                                       implementation=implementation)
    return out.reshape(q.shape)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *,
                          is_causal: bool = False,
                          mask: Optional[jax.Array] = None,
                          query_lengths: Optional[jax.Array] = None,
                          kv_lengths: Optional[jax.Array] = None,
                          scale: Optional[float] = None,
                          implementation: str = "auto",
                          pack_tokens: int = PACK_TOKENS) -> jax.Array:
    """Softmax attention: q `[B, T, N, H]`, k/v `[B, S, K, H]` -> `[B, T, N, H]` (q's dtype).

    Softmax is accumulated in float32 by every backend. `pack_tokens`: the row length
    "cudnn_packed" packs short sequences into (0: "auto" never packs).
    """
    flagged = is_causal or query_lengths is not None or kv_lengths is not None
    impl = resolve_attention_implementation(implementation, q, mask, k.shape[1], lengths_or_causal=flagged,
                                            pack_tokens=pack_tokens)
    if impl in ("cudnn", "cudnn_packed", "tpu_flash") and mask is not None:
        raise ValueError(f"the {impl} attention backend takes lengths and is_causal, not a dense mask")
    if impl == "cudnn_packed":
        if flagged:
            raise ValueError("cudnn_packed attention packs whole sequences: no lengths or is_causal")
        return packed_attention(q, k, v, pack_factor(q.shape[0], q.shape[1], k.shape[1], pack_tokens),
                                scale=scale, implementation="cudnn")
    if impl == "tpu_flash":
        return tpu_flash_attention(q, k, v, is_causal=is_causal, query_lengths=query_lengths,
                                   kv_lengths=kv_lengths, scale=scale)
    return jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, is_causal=is_causal,
        query_seq_lengths=query_lengths, key_value_seq_lengths=kv_lengths,
        implementation=impl)


def _partial_attention(scores: jax.Array, valid: jax.Array, v: jax.Array, eq: str):
    """Unnormalised softmax pieces over one key set: (row max m, sum of exp(s - m), sum of
    exp(s - m) v), float32 (the probabilities enter the value product in v's dtype, accumulated
    in float32); rows without a valid key get m = -inf-safe zeros."""
    scores = jnp.where(valid, scores, -jnp.inf)
    m = jnp.max(scores, axis=-1)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.where(valid, jnp.exp(scores - m[..., None]), 0.0)
    return m, jnp.sum(p, axis=-1), jnp.einsum(eq, p.astype(v.dtype), v, preferred_element_type=jnp.float32)


def grouped_decode_attention(q: jax.Array, prefix_k: jax.Array, prefix_v: jax.Array,
                             prefix_lengths: jax.Array, own_k: jax.Array, own_v: jax.Array,
                             own_lengths: jax.Array, scale: Optional[float] = None) -> jax.Array:
    """One decode step of n = B*n / B samples per prompt that share the prompt's keys.

    q `[B*n, 1, N, H]` (rows prompt-major: row b*n + j is sample j of prompt b); prefix k/v
    `[B, P, K, H]`, one copy per prompt, of which the first `prefix_lengths[b]` are valid;
    own k/v `[B*n, M, K, H]`, each sample's generated tokens, the first `own_lengths` valid.
    Returns `[B*n, 1, N, H]` in q's dtype: softmax attention over the concatenation
    prefix ++ own, computed as two partial softmaxes merged by their log-sum-exp

        o = (e^(m1 - m) o1 + e^(m2 - m) o2) / (e^(m1 - m) l1 + e^(m2 - m) l2),  m = max(m1, m2),

    so the n queries of a group read their prompt's keys once (one `[n*N, P]` score block per
    prompt) instead of n copies of the cache.
    """
    bn, t, n_heads, h = q.shape
    b, p_len, kh, _ = prefix_k.shape
    if t != 1 or bn % b:
        raise ValueError(f"grouped decode takes [B*n, 1, N, H] queries for B={b} prompts, got {q.shape}")
    group_size = bn // b
    g = n_heads // kh
    scale = h ** -0.5 if scale is None else scale
    # Keys and values are read in their own (cache) dtype; scores accumulate in float32.
    qg = (q * jnp.asarray(scale, q.dtype)).astype(prefix_k.dtype).reshape(b, group_size, kh, g, h)
    s1 = jnp.einsum("BnKGH,BSKH->BKGnS", qg, prefix_k, preferred_element_type=jnp.float32)
    valid1 = (jnp.arange(p_len) < prefix_lengths[:, None])[:, None, None, None, :]
    m1, l1, o1 = _partial_attention(s1, valid1, prefix_v, "BKGnS,BSKH->BKGnH")
    qo = qg.reshape(bn, kh, g, h).astype(own_k.dtype)
    s2 = jnp.einsum("RKGH,RSKH->RKGS", qo, own_k, preferred_element_type=jnp.float32)
    valid2 = (jnp.arange(own_k.shape[1]) < own_lengths[:, None])[:, None, None, :]
    m2, l2, o2 = _partial_attention(s2, valid2, own_v, "RKGS,RSKH->RKGH")
    # Group-major [B, K, G, n] -> row-major [B*n, K, G].
    to_rows = lambda a: jnp.moveaxis(a, 3, 1).reshape((bn, kh, g) + a.shape[4:])  # noqa: E731
    m1, l1, o1 = to_rows(m1), to_rows(l1), to_rows(o1)
    m = jnp.maximum(m1, m2)
    w1, w2 = jnp.exp(m1 - m) * (l1 > 0), jnp.exp(m2 - m) * (l2 > 0)
    out = (w1[..., None] * o1 + w2[..., None] * o2) / jnp.maximum(w1 * l1 + w2 * l2, 1e-30)[..., None]
    return out.reshape(bn, 1, n_heads, h).astype(q.dtype)


def gelu(x: jax.Array) -> jax.Array:
    """Exact GELU, x * (1 + erf(x / sqrt 2)) / 2, computed in (at least) float32 and returned in
    x's dtype.

    torch's formula (`nn.GELU()`, also in bfloat16, where torch computes in float32). Written
    with `lax.erf` rather than `jax.nn.gelu(approximate=False)`: that one lowers erfc to about
    a hundred element-wise ops which XLA:GPU splits into two passes over the activation (its
    input is read too many times to fuse), while `erf` is one HLO op the bias add, the
    activation and the cast fuse around.
    """
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))   # float64 stays float64
    return (0.5 * xf * (1.0 + jax.lax.erf(xf * 0.7071067811865476))).astype(x.dtype)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": gelu,
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


def maybe_remat(block: type[nn.Module], policy: str, static_argnums: tuple[int, ...] = (),
                prevent_cse: bool = False) -> type[nn.Module]:
    """Wraps `block` in `nn.remat` with the named `jax.checkpoint_policies` entry ("none": no remat).

    Inside `nn.scan` XLA cannot merge the recomputation with the forward (`prevent_cse=False`,
    the default); a block called outside a scan needs `prevent_cse=True`.
    """
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r} is not one of {sorted(REMAT_POLICIES)}")
    if policy == "none":
        return block
    return nn.remat(block, policy=REMAT_POLICIES[policy], prevent_cse=prevent_cse,
                    static_argnums=static_argnums)


def separate_operands(x: jax.Array, n: int) -> tuple[jax.Array, ...]:
    """`n` handles on `x` that XLA treats as different values, so that matmuls reading them stay
    separate matmuls.

    XLA's GPU compiler merges matmuls that share an operand (q/k/v, gate/up) into one, with
    their weights concatenated into a new buffer on every call. When few rows go through the
    weights (a decode step), that copy costs twice the weights' reads. An optimisation barrier
    is free at run time.
    """
    return jax.lax.optimization_barrier((x,) * n)


def blocked_argmax(x: jax.Array, block: int = 128) -> jax.Array:
    """`jnp.argmax(x, axis=-1)` (int32, the first index of the largest value; a NaN counts as
    the largest), in two passes: the largest value of each block of `block` entries, then the
    argmax within the first block that holds the overall one.

    The same indices as `jnp.argmax`. On XLA's CPU backend an argmax over a vocabulary-sized
    axis runs as a scalar loop of value-index pairs, many times slower than a max over the same
    axis; this form reduces with max and leaves one block to the pair reduction.
    """
    v = x.shape[-1]
    if v <= block:
        return jnp.argmax(x, axis=-1).astype(jnp.int32)
    n = -(-v // block)
    low = jnp.array(-jnp.inf if jnp.issubdtype(x.dtype, jnp.floating) else jnp.iinfo(x.dtype).min, x.dtype)
    padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n * block - v)], constant_values=low)
    blocks = padded.reshape(x.shape[:-1] + (n, block))
    first = jnp.argmax(jnp.max(blocks, axis=-1), axis=-1)
    rows = jnp.take_along_axis(blocks, first[..., None, None], axis=-2)[..., 0, :]
    return (first * block + jnp.argmax(rows, axis=-1)).astype(jnp.int32)


def flat_product(x: jax.Array, kernel: jax.Array, bias: Optional[jax.Array], dtype: Dtype) -> jax.Array:
    """x `[..., D]` times kernel `[D, *F]` (+ bias `[*F]`) -> `[..., *F]`, computed as one
    `[D, prod(F)]` product plus a `[prod(F)]` bias: the form XLA:GPU hands to cuBLAS with the
    bias in its epilogue (with a multi-axis bias, XLA broadcasts it to the whole output first
    and the matmul reads it back). The first axis of F stays the outer factor of the columns,
    so a sharded F[0] (heads) keeps the product's column sharding."""
    d, f = kernel.shape[0], kernel.shape[1:]
    y = jnp.einsum("...D,DF->...F", x.astype(dtype), kernel.reshape(d, -1).astype(dtype))
    if bias is not None:
        y = y + bias.reshape(-1).astype(dtype)
    return y.reshape(*x.shape[:-1], *f)


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
    separate_matmuls: bool = False   # keep gate and up apart (see separate_operands)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d, f = self.hidden_size, self.intermediate_size
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        up_bias = dict(bias_shape=(f,), bias_axes=("mlp",)) if self.use_bias else {}
        xg, xu = separate_operands(x, 2) if self.separate_matmuls else (x, x)
        gate = Einsum("...D,DF->...F", (d, f), ("embed", "mlp"), name="gate", **up_bias, **kw)(xg)
        up = Einsum("...D,DF->...F", (d, f), ("embed", "mlp"), name="up", **up_bias, **kw)(xu)
        h = activation(self.act)(gate) * up
        if h.ndim == len(self.act_axes):
            h = constrain(h, self.act_axes)
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
