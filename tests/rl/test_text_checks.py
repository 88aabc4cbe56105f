"""Byte-level template checks against Python's `re` on every Unicode code point."""

import re
import sys

import numpy as np
import jax
import jax.numpy as jnp

from segzero_jax.rl.text_checks import first_brace_object, whitespace_covered


def test_whitespace_matches_python_re_on_all_code_points():
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    expected = np.array([re.fullmatch(r"\s", ch) is not None for ch in chars])
    encoded = [ch.encode("utf-8") for ch in chars]
    lengths = np.array([len(e) for e in encoded])
    stream = np.frombuffer(b"".join(encoded), np.uint8)
    covered = np.asarray(jax.jit(whitespace_covered)(jnp.asarray(stream)))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    all_covered = np.logical_and.reduceat(covered, starts)
    any_covered = np.logical_or.reduceat(covered, starts)
    np.testing.assert_array_equal(all_covered, expected)
    np.testing.assert_array_equal(any_covered, expected)


def test_first_brace_object_matches_re_search():
    fn = jax.jit(first_brace_object)
    for text in ["a {} {x} }", "{", "}{", "{}}", "x{{a}}", "no braces", "{}", "{ü}", "{a"]:
        data = np.frombuffer(text.encode().ljust(16, b"\0"), np.uint8)
        found, start, end = fn(jnp.asarray(data), len(text.encode()))
        m = re.search(r"{[^}]+}", text)
        assert bool(found) == bool(m), text
        if m:
            pre = len(text[:m.start()].encode())
            assert (int(start), int(end)) == (pre, pre + len(m.group(0).encode()) - 1), text
