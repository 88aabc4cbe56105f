"""The JSON automaton decides validity exactly as Python's json.loads on flat objects."""

import json

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

from segzero_jax.rl.json_scan import KIND_ARRAY, KIND_STRING, scan_answer_json

W = 96
SCAN = jax.jit(jax.vmap(lambda w, n: scan_answer_json(w, n, 4)))
ATOMS = ['"a"', '"bbox"', '"x\\"y"', '"\\u00e9"', '"\\q"', '"ü"', "1", "-0", "01", "1.5",
         "1.", "-", "2e3", "2E+1", "1e", "true", "tru", "null", "NaN", "Infinity",
         "-Infinity", "nul", "[", "]", "[]", ",", ":", " ", "\n", "\t", "{", "'a'", "\x01"]


def _scan(texts):
    arr = np.zeros((len(texts), W), np.uint8)
    lens = np.zeros((len(texts),), np.int32)
    for i, t in enumerate(texts):
        b = t.encode()[:W]
        arr[i, :len(b)], lens[i] = list(b), len(b)
    return jax.device_get(SCAN(jnp.asarray(arr), jnp.asarray(lens)))


def _python_ok(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.sampled_from(ATOMS), max_size=12), min_size=32, max_size=32))
def test_validity_matches_json_loads(pieces):
    texts = []
    for i, p in enumerate(pieces):
        body = "".join(p)
        # half of the cases as well-formed "key": value pairs around the random atoms
        texts.append("{" + (f'"k{i}": [' + body + "]" if i % 2 else body) + "}")
    texts = [t for t in texts if len(t.encode()) <= W]
    out = _scan(texts)
    for i, t in enumerate(texts):
        assert bool(out.ok[i]) == _python_ok(t), t


def test_fields_of_a_typical_answer():
    text = ('{"bbox": [10, 100.5, -2e1, true], "points_1": [NaN, [1]], "points_2": "ab",'
            ' "bbox": []}')
    out = _scan([text])
    assert out.ok[0] and not out.exotic[0]
    assert list(out.kind[0]) == [KIND_ARRAY, KIND_ARRAY, KIND_STRING, KIND_ARRAY]
    assert list(out.count[0]) == [4, 2, 0, 0] and out.str_len[0][2] == 2
    np.testing.assert_array_equal(out.elem[0][0], [10, 100.5, -20, 1])
    assert np.isnan(out.elem[0][1][0]) and list(out.elem_num[0][1][:2]) == [True, False]
    assert out.key_flags[0][3][0] and out.key_flags[0][1][1] and out.key_flags[0][2][2]


@pytest.mark.parametrize("text", ['{"\\ud83d\\ude00": 1}', '{"a":1,"b":2,"c":3,"d":4,"e":5}'])
def test_exotic_objects_are_flagged(text):
    out = _scan([text])
    assert out.ok[0] and out.exotic[0]


def test_escaped_keys_are_the_decoded_keys():
    out = _scan(['{"bb\\u006fx": 1, "bbox": 2, "\\u540d\\u5b57": 3, "名字": 4}'])
    assert out.ok[0] and not out.exotic[0]
    flags, hashes = out.key_flags[0], out.key_hash[0]
    assert flags[0][0] and flags[1][0]
    assert (hashes[0] == hashes[1]).all() and (hashes[2] == hashes[3]).all()
    assert not (hashes[0] == hashes[2]).all()
