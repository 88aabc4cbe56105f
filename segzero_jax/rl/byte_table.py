"""Token ids -> UTF-8 byte stream on device, for any tokenizer given its per-id bytes.

`ByteTable` stores every token's bytes back to back (`flat`), with `offsets[V]` and
`lengths[V]`; ids whose text the reference decode drops (special tokens under
`skip_special_tokens=True`, as Seg-Zero's reward manager decodes) get length 0.

`response_bytes` turns one response's ids into its byte string, padded to a static
`max_bytes`:  stream[j] = flat[offsets[id_k] + j - start_k]  with  k = #{t: end_t <= j},
start/end the exclusive/inclusive cumulative token lengths; the per-byte source offset
comes from a prefix sum of +/-(offsets[id_k] - start_k) scattered at token starts/ends. Everything is shape-static, so
it runs under jit, vmap and a sharded batch.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class ByteTable(NamedTuple):
    """flat uint8[M], offsets int32[V], lengths int32[V] (a pytree of device arrays)."""

    flat: jax.Array
    offsets: jax.Array
    lengths: jax.Array

    @property
    def vocab_size(self) -> int:
        return int(self.offsets.shape[0])


def byte_table_from_token_bytes(token_bytes: Sequence[bytes],
                                drop_ids: Optional[Sequence[int]] = None) -> ByteTable:
    """Packs per-id byte strings (id order) into a ByteTable; `drop_ids` decode to nothing."""
    lengths = np.array([len(b) for b in token_bytes], dtype=np.int64)
    if drop_ids is not None:
        drop = np.asarray(list(drop_ids), dtype=np.int64)
        if drop.size and (drop.min() < 0 or drop.max() >= len(token_bytes)):
            raise ValueError(f"drop_ids out of range for a vocabulary of {len(token_bytes)}")
        lengths[drop] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    flat = np.frombuffer(b"".join(b if n else b"" for b, n in zip(token_bytes, lengths)),
                         dtype=np.uint8)
    if flat.size == 0:
        flat = np.zeros((1,), np.uint8)
    if offsets.size and offsets[-1] + lengths[-1] >= 2**31:
        raise ValueError("byte table larger than 2 GiB")
    return ByteTable(jnp.asarray(flat), jnp.asarray(offsets, jnp.int32),
                     jnp.asarray(lengths, jnp.int32))


def byte_table_for_tokenizer(tokenizer, skip_special_tokens: bool = True) -> ByteTable:
    """ByteTable of a `QwenTokenizer`-like object (`token_bytes()`, `special_ids`)."""
    drop = tokenizer.special_ids if skip_special_tokens else None
    return byte_table_from_token_bytes(tokenizer.token_bytes(), drop)


def response_lengths(token_ids: jax.Array, eos_ids: Sequence[int],
                     lengths: Optional[jax.Array] = None) -> jax.Array:
    """int32[B]: tokens up to and including the first EOS, capped by `lengths` if given."""
    ids = jnp.asarray(token_ids)
    is_eos = jnp.zeros(ids.shape, bool)
    for e in eos_ids:
        is_eos = is_eos | (ids == e)
    t = ids.shape[-1]
    first = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, axis=-1) + 1, t).astype(jnp.int32)
    return first if lengths is None else jnp.minimum(first, lengths.astype(jnp.int32))


def response_bytes(token_ids: jax.Array, length: jax.Array, table: ByteTable,
                   max_bytes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One response: (uint8[max_bytes] zero-padded bytes, int32 byte count, bool overflow).

    token_ids int32[T] (ids >= V or < 0 are treated as empty), length int32 (valid tokens).
    """
    t = token_ids.shape[0]
    vocab = table.offsets.shape[0]
    ids = token_ids.astype(jnp.int32)
    valid = (jnp.arange(t) < length) & (ids >= 0) & (ids < vocab)
    safe = jnp.where(valid, ids, 0)
    tok_len = jnp.where(valid, table.lengths[safe], 0)
    ends = jnp.cumsum(tok_len)
    starts = ends - tok_len
    total = ends[-1] if t else jnp.int32(0)
    j = jnp.arange(max_bytes, dtype=jnp.int32)
    # The token covering byte j reads flat[base + j], base = offsets[id] - start: add +base
    # at its start and -base at its end, then a prefix sum gives base at every byte.
    base = table.offsets[safe] - starts
    delta = (jnp.zeros((max_bytes,), jnp.int32)
             .at[starts].add(base, mode="drop").at[ends].add(-base, mode="drop"))
    at_j = jax.lax.associative_scan(jnp.add, delta)
    src = jnp.clip(at_j + j, 0, table.flat.shape[0] - 1)
    stream = jnp.where(j < total, table.flat[src], jnp.uint8(0))
    return stream, jnp.minimum(total, max_bytes).astype(jnp.int32), total > max_bytes
