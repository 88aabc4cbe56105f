"""Vectorised checks over one response's byte stream (uint8[N] with n valid bytes).

* `thinking_format_bytes`: Seg-Zero's `re.fullmatch(r"<think>.*?</think>\\s*<answer>.*?</answer>",
  s, re.DOTALL)`. With DOTALL the lazy groups match anything, so s matches iff it starts with
  `<think>`, ends with `</answer>`, and some `</think>` at i >= 7 is followed by a whitespace
  run and `<answer>` ending at or before n - 9. `\\s` is Python's Unicode whitespace
  (str.isspace), matched here as UTF-8 sequences; a run of covered bytes that starts on a
  character boundary is a run of whitespace characters.
* `first_brace_object`: the span of `re.search(r"{[^}]+}", s)`: the leftmost `{` whose next
  byte exists and is not `}` and that has a `}` after it; the span ends at the first `}`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ASCII_WHITESPACE = (9, 10, 11, 12, 13, 28, 29, 30, 31, 32)
# UTF-8 encodings of the non-ASCII code points Python's `\s` matches.
UNICODE_WHITESPACE = tuple(chr(c).encode("utf-8") for c in (
    0x85, 0xA0, 0x1680, *range(0x2000, 0x200B), 0x2028, 0x2029, 0x202F, 0x205F, 0x3000))
_BIG = 1 << 30


def _shift(x: jax.Array, k: int, fill) -> jax.Array:
    """y[i] = x[i + k] (k may be negative), `fill` outside."""
    if k == 0:
        return x
    pad = jnp.full((abs(k),), fill, x.dtype)
    return jnp.concatenate([x[k:], pad]) if k > 0 else jnp.concatenate([pad, x[:k]])


def match_at(stream: jax.Array, pattern: bytes) -> jax.Array:
    """bool[N]: `pattern` starts at position i."""
    out = jnp.ones(stream.shape, bool)
    for k, c in enumerate(pattern):
        out = out & (_shift(stream, k, 0) == c)
    return out


def whitespace_covered(stream: jax.Array) -> jax.Array:
    """bool[N]: byte i belongs to a whitespace character (ASCII or one of UNICODE_WHITESPACE)."""
    b0, b1, b2 = stream, _shift(stream, 1, 0), _shift(stream, 2, 0)
    covered = (b0 == 32) | ((b0 >= 9) & (b0 <= 13)) | ((b0 >= 28) & (b0 <= 31))
    two = (b0 == 0xC2) & ((b1 == 0x85) | (b1 == 0xA0))
    three = (((b0 == 0xE2) & (b1 == 0x80) & (((b2 >= 0x80) & (b2 <= 0x8A)) | (b2 == 0xA8)
                                           | (b2 == 0xA9) | (b2 == 0xAF)))
             | ((b0 == 0xE2) & (b1 == 0x81) & (b2 == 0x9F))
             | ((b0 == 0xE3) & (b1 == 0x80) & (b2 == 0x80))
             | ((b0 == 0xE1) & (b1 == 0x9A) & (b2 == 0x80)))
    starts = two | three
    return (covered | starts | _shift(starts, -1, False) | _shift(three, -2, False))


def thinking_format_bytes(stream: jax.Array, n: jax.Array) -> jax.Array:
    """bool: the full-match think/answer template (see module docstring)."""
    size = stream.shape[0]
    pos = jnp.arange(size)
    valid = pos < n
    starts = match_at(stream, b"<think>")[0]
    tail = jax.lax.dynamic_slice(jnp.concatenate([stream, jnp.zeros((9,), stream.dtype)]),
                                 (jnp.maximum(n - 9, 0),), (9,))
    ends = jnp.all(tail == jnp.frombuffer(b"</answer>", jnp.uint8)) & (n >= 9)
    covered = whitespace_covered(stream) & valid
    next_uncovered = jax.lax.cummin(jnp.where(covered, _BIG, pos), reverse=True)
    after_close = _shift(next_uncovered, 8, size)
    answer_open = match_at(stream, b"<answer>") & valid
    opened = answer_open[jnp.clip(after_close, 0, size - 1)] & (after_close < size)
    middle = (match_at(stream, b"</think>") & (pos >= 7) & opened
              & (after_close + 8 <= n - 9))
    return starts & ends & jnp.any(middle)


def first_brace_object(stream: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array,
                                                                  jax.Array]:
    """(found, start, end) of the first `{[^}]+}` match; end is the index of its `}`."""
    size = stream.shape[0]
    pos = jnp.arange(size)
    valid = pos < n
    is_close = (stream == ord("}")) & valid
    next_close = jax.lax.cummin(jnp.where(is_close, pos, _BIG), reverse=True)
    close_after = _shift(next_close, 1, _BIG)
    candidate = ((stream == ord("{")) & valid & (pos + 1 < n)
                 & (_shift(stream, 1, ord("}")) != ord("}")) & (close_after < n))
    start = jnp.argmax(candidate)
    return jnp.any(candidate), start, close_after[start]
