"""Qwen2 decoder of Qwen2.5-VL (GQA with qkv bias, RMSNorm, gated MLP, M-RoPE), scanned layers.

Einsum alphabet: B batch, T query length, S key length (cache capacity when decoding),
D model width, N query heads, K kv heads, H head dim, F mlp width, V vocab.

  h = x + o(attn(rope(q(norm(x))), rope(k(norm(x))), v(norm(x))))
  y = h + down(silu(gate(norm(h))) * up(norm(h)))

Attention takes no dense mask, only the forms the cuDNN kernel (and XLA everywhere) accepts
(see layers.dot_product_attention for the backends):
  * prompt / full sequence: is_causal, plus kv_lengths int32[B] when rows are padded on the
    right (the model packs any other padding to the right first);
  * decode: one query per row over its cache row, kv_lengths = keys held + 1.
Query positions past a row's length produce finite garbage; callers ignore them.
"""

from __future__ import annotations

import re
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from segzero_jax.models.layers import (Einsum, GatedMLP, RMSNorm, apply_rotary, constrain,
                                       dot_product_attention, grouped_decode_attention,
                                       logical_param, maybe_remat, separate_operands)
from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig


# Names of the decoder's layers in the param tree: the scan's submodule (params under
# `layers/layer`, stacked), or one module per layer when unscanned.
SCANNED_STACK = "layers"


def layer_name(i: int) -> str:
    """The unscanned decoder's module name of layer i."""
    return f"layers_{i}"


def layer_number(name: str) -> Optional[int]:
    """i for `layer_name(i)`, None for any other name."""
    m = re.fullmatch(r"layers_(\d+)", name)
    return int(m.group(1)) if m else None


class DecoderLayer(nn.Module):
    """One decoder layer. Returns (y `[B, T, D]`, (k, v) `[B, T, K, H]` rotated keys/values).

    With a cache — the whole stack's `cache_k`/`cache_v` `[L, B, S, K, H]` and this layer's
    `layer_index`, or this layer's own `[B, S, K, H]` buffers with `layer_index=None` — without
    `cache_index` (prefill) the fresh k/v go to slots `[0, T)` of the layer and attention runs
    over them; with `cache_index` int32[B] (decode, T = 1) row b's new k/v go to slot
    `cache_index[b]` (dropped when that is S) and attention runs over the layer's first
    `kv_lengths[b]` keys. Either way the updated cache is returned instead of the fresh k/v.
    A decode step keeps the q/k/v and gate/up matmuls apart (`layers.separate_operands`), so
    each weight is read once.

    Grouped decode (`prefix` = (k, v, lengths)): the cache holds each sample's generated
    tokens only, and the B*n rows (prompt-major) also attend to their prompt's keys, one copy
    per prompt (`[L, B, P, K, H]` stacked with `layer_index`, or this layer's `[B, P, K, H]`),
    the first `lengths[b]` valid (`layers.grouped_decode_attention`).
    """

    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, x, cos, sin, kv_lengths, is_causal: bool,
                 cache_k=None, cache_v=None, cache_index=None, layer_index=None, prefix=None):
        c, t = self.config, self.config.text
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        d, n, kh, h = t.hidden_size, t.num_heads, t.num_kv_heads, t.head_dim
        decoding = cache_k is not None and cache_index is not None
        if decoding and x.shape[1] != 1:
            raise ValueError(f"decoding with a cache takes one token per row, got {x.shape[1]}")
        y = RMSNorm(t.rms_norm_eps, c.weight_dtype, name="input_norm")(x)
        yq, yk, yv = separate_operands(y, 3) if decoding else (y, y, y)
        q = Einsum("BTD,DNH->BTNH", (d, n, h), ("embed", "heads", "head_dim"), (n, h),
                   ("heads", "head_dim"), name="q", **kw)(yq)
        k = Einsum("BTD,DKH->BTKH", (d, kh, h), ("embed", "kv_heads", "head_dim"), (kh, h),
                   ("kv_heads", "head_dim"), name="k", **kw)(yk)
        v = Einsum("BTD,DKH->BTKH", (d, kh, h), ("embed", "kv_heads", "head_dim"), (kh, h),
                   ("kv_heads", "head_dim"), name="v", **kw)(yv)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q = constrain(q, ("act_batch", "act_length", "act_heads", None))
        # The stack's cache is addressed with a leading layer index, a layer's own buffer without.
        lead = () if layer_index is None else (layer_index,)
        if cache_k is not None and not decoding:                 # prefill: slots [0, T) of every row
            start = lead + (0, 0, 0, 0)
            fresh_k, fresh_v = (a.reshape((1,) * len(lead) + a.shape) for a in (k, v))
            cache_k = jax.lax.dynamic_update_slice(cache_k, fresh_k.astype(cache_k.dtype), start)
            cache_v = jax.lax.dynamic_update_slice(cache_v, fresh_v.astype(cache_v.dtype), start)
            k_att, v_att = k, v
            new_kv = (cache_k, cache_v)
        elif decoding:
            slot = lead + (jnp.arange(k.shape[0]), cache_index)
            cache_k = cache_k.at[slot].set(k[:, 0].astype(cache_k.dtype), mode="drop")
            cache_v = cache_v.at[slot].set(v[:, 0].astype(cache_v.dtype), mode="drop")
            if layer_index is None:
                k_att, v_att = cache_k.astype(q.dtype), cache_v.astype(q.dtype)
            else:
                k_att = jax.lax.dynamic_index_in_dim(cache_k, layer_index, 0, keepdims=False).astype(q.dtype)
                v_att = jax.lax.dynamic_index_in_dim(cache_v, layer_index, 0, keepdims=False).astype(q.dtype)
            new_kv = (cache_k, cache_v)
        else:
            k_att, v_att = k, v
            new_kv = (k, v)
        if prefix is not None:
            if not decoding:
                raise ValueError("a shared prompt prefix is only read by decode steps")
            pk, pv, p_lengths = prefix
            if layer_index is not None:
                pk = jax.lax.dynamic_index_in_dim(pk, layer_index, 0, keepdims=False)
                pv = jax.lax.dynamic_index_in_dim(pv, layer_index, 0, keepdims=False)
            o = grouped_decode_attention(q, pk, pv, p_lengths, k_att, v_att, kv_lengths)
        else:
            o = dot_product_attention(q, k_att, v_att, is_causal=is_causal, kv_lengths=kv_lengths,
                                      implementation=c.attention_impl)
        o = constrain(o, ("act_batch", "act_length", "act_heads", None))
        x = x + Einsum("BTNH,NHD->BTD", (n, h, d), ("heads", "head_dim", "embed"), name="o", **kw)(o)
        x = constrain(x, ("act_batch", "act_length", "act_embed"))
        y = RMSNorm(t.rms_norm_eps, c.weight_dtype, name="post_attention_norm")(x)
        x = x + GatedMLP(d, t.intermediate_size, t.hidden_act, separate_matmuls=decoding, name="mlp", **kw)(y)
        return constrain(x, ("act_batch", "act_length", "act_embed")), new_kv


class _ScanBody(nn.Module):
    """Scan adapter over the prompt: carry x; broadcast rotary/lengths; k/v stacked as outputs."""

    config: Qwen2_5_VLConfig
    is_causal: bool = True

    @nn.compact
    def __call__(self, x, cos, sin, kv_lengths):
        layer = maybe_remat(DecoderLayer, self.config.remat_policy, static_argnums=(5,))
        return layer(self.config, name="layer")(x, cos, sin, kv_lengths, self.is_causal)


class _CacheScanBody(nn.Module):
    """Scan adapter for prefill and decode: the whole cache `[L, B, S, K, H]` rides in the carry
    with the layer number, and each layer writes only its new keys/values into it. (As scanned
    inputs and outputs the cache would exist twice, and decode would rewrite it every step.)"""

    config: Qwen2_5_VLConfig
    is_causal: bool = True

    @nn.compact
    def __call__(self, carry, cos, sin, kv_lengths, cache_index, prefix):
        x, cache_k, cache_v, i = carry
        x, (cache_k, cache_v) = DecoderLayer(self.config, name="layer")(
            x, cos, sin, kv_lengths, self.is_causal, cache_k, cache_v, cache_index, i, prefix)
        return (x, cache_k, cache_v, i + 1), None


class LanguageModel(nn.Module):
    """Embedding, scanned decoder stack, final norm and float32 logits."""

    config: Qwen2_5_VLConfig

    def setup(self):
        c, t = self.config, self.config.text
        init = nn.initializers.normal(0.02)
        self.embedding = logical_param(self, "embedding", init, (t.vocab_size, t.hidden_size),
                                       ("vocab", "embed"), c.weight_dtype)
        if not c.tie_word_embeddings:
            self.lm_head = logical_param(self, "lm_head", init, (t.hidden_size, t.vocab_size),
                                         ("embed", "vocab"), c.weight_dtype)
        self.norm = RMSNorm(t.rms_norm_eps, c.weight_dtype)
        self.decoder = DecoderStack(c)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """int32[B, T] -> compute-dtype `[B, T, D]`."""
        x = jnp.take(self.embedding, input_ids, axis=0).astype(self.config.compute_dtype)
        return constrain(x, ("act_batch", "act_length", "act_embed"))

    def logits(self, x: jax.Array) -> jax.Array:
        """Final norm + lm head: `[B, T, D]` -> float32 `[B, T, V]`."""
        dt = self.config.compute_dtype
        x = self.norm(x).astype(dt)
        if self.config.tie_word_embeddings:
            out = jnp.einsum("BTD,VD->BTV", x, self.embedding.astype(dt), preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("BTD,DV->BTV", x, self.lm_head.astype(dt), preferred_element_type=jnp.float32)
        return constrain(out.astype(jnp.float32), ("act_batch", "act_length", "act_vocab"))

    def token_log_probs(self, x: jax.Array, targets: jax.Array, temperature: float = 1.0,
                        chunk_size: int = 256) -> tuple[jax.Array, jax.Array]:
        """Log-probability of `targets` int32[B, R] and entropy, both float32[B, R], from hidden
        states `[B, R, D]` (before the final norm), at `temperature`.

        The float32 logits exist one chunk of `chunk_size` positions at a time, in the forward
        and (recomputed) in the backward pass, never as a whole `[B, R, V]` array.
        """
        c = self.config
        dt = c.compute_dtype
        b, r, _ = x.shape
        x = self.norm(x).astype(dt)
        if c.tie_word_embeddings:
            w, eq = self.embedding.astype(dt), "BCD,VD->BCV"
        else:
            w, eq = self.lm_head.astype(dt), "BCD,DV->BCV"
        size = max(1, min(chunk_size, r))
        n = -(-r // size)
        pad = n * size - r
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        t = jnp.pad(jnp.asarray(targets, jnp.int32), ((0, 0), (0, pad)))
        xs = jnp.moveaxis(x.reshape(b, n, size, -1), 1, 0)
        ts = jnp.moveaxis(t.reshape(b, n, size), 1, 0)

        @jax.checkpoint
        def chunk(args):
            xc, tc = args
            z = jnp.einsum(eq, xc, w, preferred_element_type=jnp.float32) / temperature
            z = constrain(z, ("act_batch", "act_length", "act_vocab"))
            lse = jax.nn.logsumexp(z, axis=-1)
            logp = jnp.take_along_axis(z, tc[..., None], axis=-1)[..., 0] - lse
            entropy = lse - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)
            return logp, entropy

        logp, entropy = jax.lax.map(chunk, (xs, ts))
        unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape(b, n * size)[:, :r]
        return unchunk(logp), unchunk(entropy)

    def __call__(self, x, cos, sin, *, kv_lengths: Optional[jax.Array] = None, is_causal: bool = True,
                 cache: Optional[tuple[jax.Array, jax.Array]] = None,
                 cache_index: Optional[jax.Array] = None, prefix=None):
        """Decoder stack on embeddings `[B, T, D]`; returns (hidden `[B, T, D]`, (k, v)).

        k/v come back as `[layers, B, T, K, H]` (or the updated `[layers, B, S, K, H]` cache);
        unscanned (`config.scan_layers=False`) as tuples of per-layer arrays, like its cache.
        `prefix`: a shared prompt cache for grouped decode steps (see `DecoderLayer`).
        """
        return self.decoder(x, cos, sin, kv_lengths, is_causal, cache, cache_index, prefix)


class DecoderStack(nn.Module):
    """`num_layers` decoder layers: under one `nn.scan` (params stacked on a leading "layers"
    axis, submodule `layers`), or with `config.scan_layers=False` as modules `layers_0 ...
    layers_{L-1}` of their own, the cache a tuple of per-layer buffers."""

    config: Qwen2_5_VLConfig

    @nn.compact
    def __call__(self, x, cos, sin, kv_lengths, is_causal: bool, cache, cache_index, prefix=None):
        c = self.config
        if not c.scan_layers:
            # The remat'd layer is called outside a scan: keep XLA from merging the recomputation.
            layer = maybe_remat(DecoderLayer, c.remat_policy, static_argnums=(5,), prevent_cse=True)
            ks, vs = [], []
            for i in range(c.text.num_layers):
                if cache is None:
                    x, (k, v) = layer(c, name=layer_name(i))(x, cos, sin, kv_lengths, is_causal)
                else:
                    layer_prefix = None if prefix is None else (prefix[0][i], prefix[1][i], prefix[2])
                    x, (k, v) = DecoderLayer(c, name=layer_name(i))(
                        x, cos, sin, kv_lengths, is_causal, cache[0][i], cache[1][i], cache_index,
                        None, layer_prefix)
                ks.append(k)
                vs.append(v)
            return x, (tuple(ks), tuple(vs))
        scan = dict(variable_axes={"params": 0}, split_rngs={"params": True},
                    length=self.config.text.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
        if cache is None:
            stack = nn.scan(_ScanBody, in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), out_axes=0, **scan)
            return stack(self.config, is_causal, name=SCANNED_STACK)(x, cos, sin, kv_lengths)
        stack = nn.scan(_CacheScanBody, in_axes=(nn.broadcast,) * 5, **scan)
        carry = (x, cache[0], cache[1], jnp.zeros((), jnp.int32))
        (x, k, v, _), _ = stack(self.config, is_causal, name=SCANNED_STACK)(carry, cos, sin, kv_lengths,
                                                                            cache_index, prefix)
        return x, (k, v)
