"""Vectorised checks over one response's byte stream (uint8[N] with n valid bytes).

* `thinking_format_bytes`: Seg-Zero's `re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>",
  s, re.DOTALL)`. With DOTALL the lazy groups match anything, so s matches iff it starts with
  `<think>`, ends with `</answer>`, and some `</think>` at i >= 7 is followed by a whitespace
  run and `<answer>` ending at or before n - 9 (the first two `</think>` are tried). `\\s` is Python's Unicode whitespace
  (str.isspace), matched here as UTF-8 sequences; a run of covered bytes that starts on a
  character boundary is a run of whitespace characters.
* `first_brace_object`: the span of `re.search(r"{[^}]+}", s)`: the leftmost `{` whose next
  byte exists and is not `}` and that has a `}` after the next byte; the span ends at the
  first `}` after it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ASCII_WHITESPACE = (9, 10, 11, 12, 13, 28, 29, 30, 31, 32)
# UTF-8 encodings of the non-ASCII code points Python's `\s` matches.
UNICODE_WHITESPACE = tuple(chr(c).encode("utf-8") for c in (
    0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))


def _shift(x: jax.Array, k: int, fill) -> jax.Array:
    """y[i] = x[i + k] (k may be negative), `fill` outside."""
    if k == 0:
        return x
    pad = jnp.full((abs(k),), fill, x.dtype)
    return jnp.concatenate([x[k:], pad]) if k > 0 else jnp.concatenate([pad, x[:k]])


def byte_words(stream: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Little-endian uint32 words of bytes [i, i+4) and [i+4, i+8) at every position i."""
    size = stream.shape[0]
    p = jnp.concatenate([stream, jnp.zeros((8,), stream.dtype)]).astype(jnp.uint32)
    w0 = p[0:size] | (p[1:size + 1] << 8) | (p[2:size + 2] << 16) | (p[3:size + 3] << 24)
    w1 = p[4:size + 4] | (p[5:size + 5] << 8) | (p[6:size + 6] << 16) | (p[7:size + 7] << 24)
    return w0, w1


def match_words(words: tuple[jax.Array, jax.Array], pattern: bytes) -> jax.Array:
    """bool[N]: `pattern` (at most 8 bytes) starts at position i."""
    if not 0 < len(pattern) <= 8:
        raise ValueError(f"pattern of {len(pattern)} bytes; 1..8 supported")
    out = None
    for w, chunk in zip(words, (pattern[:4], pattern[4:8])):
        if not chunk:
            continue
        mask = (1 << (8 * len(chunk))) - 1
        hit = (w & jnp.uint32(mask)) == jnp.uint32(int.from_bytes(chunk, "little"))
        out = hit if out is None else out & hit
    return out


def whitespace_covered(stream: jax.Array, words=None) -> jax.Array:
    """bool[N]: byte i belongs to a whitespace character (ASCII or one of UNICODE_WHITESPACE)."""
    w0 = (words or byte_words(stream))[0]
    b0, b1, b2 = w0 & 0xFF, (w0 >> 8) & 0xFF, (w0 >> 16) & 0xFF
    covered = (b0 == 32) | ((b0 >= 9) & (b0 <= 13)) | ((b0 >= 28) & (b0 <= 31))
    two = (b0 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
    three = (((b0 == 0xE2) & (b1 == 0x80) & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8)
                                           | (b2 == 0xA9) | (b2 == 0xAF)))
             | ((b0 == 0xE2) & (b1 == 0x81) & (b2 == 0x9F))
             | ((b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80))
             | ((b0 == 0xE1) & (b1 == 0x9A) & (b2 == 0x80)))
    starts = two | three
    return covered | starts | _shift(starts, -1, False) | _shift(three, -2, False)


def thinking_format_bytes(stream: jax.Array, n: jax.Array,
                          max_think_closings: int = 2) -> jax.Array:
    """bool: the full-match think/answer template (see module docstring).

    For each of the first `max_think_closings` `</think>` (at i >= 7) the first
    non-whitespace byte after it must start an `<answer>` ending at or before n - 9. Each
    candidate costs two min-reductions; a response whose only matching `</think>` comes
    later scores 0 (never above the reference).
    """
    size = stream.shape[0]
    pos = jnp.arange(size, dtype=jnp.int32)
    valid = pos < n
    words = byte_words(stream)
    starts = jnp.all(stream[:7] == jnp.frombuffer(b"<think>", jnp.uint8)) if size >= 7 else False
    tail = jax.lax.dynamic_slice(stream, (jnp.maximum(n - 9, 0),), (9,))  # n <= N
    ends = jnp.all(tail == jnp.frombuffer(b"</answer>", jnp.uint8)) & (n >= 9)
    solid = valid & ~whitespace_covered(stream, words)
    closings = match_words(words, b"</think>") & (pos >= 7) & valid
    tags = match_words(words, b"<answer>") & valid & (pos + 8 <= n - 9)
    # One byte of flags per position, materialised once for the reductions below.
    flags = jax.lax.optimization_barrier(
        solid.astype(jnp.uint8) | (closings.astype(jnp.uint8) << 1)
        | (tags.astype(jnp.uint8) << 2))
    solid, closings, tags = (flags & 1) > 0, (flags & 2) > 0, (flags & 4) > 0
    big = jnp.int32(size)
    found = jnp.zeros((), bool)
    last = jnp.int32(-1)
    for _ in range(max_think_closings):
        i = jnp.min(jnp.where(closings & (pos > last), pos, big))
        k = jnp.min(jnp.where(solid & (pos >= i + 8), pos, big))
        found = found | ((i < big) & (k < big) & tags[jnp.minimum(k, size - 1)])
        last = i
    return starts & ends & found


def first_brace_object(stream: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                  jax.Array]:
    """(found, start, end) of the first `{[^}]+}` match; end is the index of its `}`."""
    size = stream.shape[0]
    pos = jnp.arange(size)
    valid = pos < n
    is_close = (stream == ord("}")) & valid
    last_close = jnp.max(jnp.where(is_close, pos, -1))
    candidate = ((stream == ord("{")) & valid & (pos + 1 < n)
                 & (_shift(stream, 1, ord("}")) != ord("}")) & (pos + 1 < last_close))
    start = jnp.min(jnp.where(candidate, pos, size))
    end = jnp.min(jnp.where(is_close & (pos > start + 1), pos, size))
    found = start < size
    return found, jnp.where(found, start, 0), jnp.where(found, end, 0)
