"""On-device rewards (from token ids) against the host reference (decoded text)."""

import json
import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from hypothesis import HealthCheck, given, settings, strategies as st
from jax.sharding import NamedSharding, PartitionSpec as P

from reward_corpus import gt_string, responses
from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
from segzero_jax.rl.byte_table import (byte_table_for_tokenizer, byte_table_from_token_bytes,
                                       response_lengths)
from segzero_jax.rl.reward_device import device_rewards
from segzero_jax.rl.reward_host import COMPONENTS, host_reward, parse_ground_truth
from segzero_jax.parallel import make_mesh

B, T = 16, 128
KEYS = COMPONENTS + ("total",)
SCHEMES = ("seg_strict", "seg", "seg_strict_soft_acc")


@pytest.fixture(scope="module")
def tok():
    return QwenTokenizer.default()


@pytest.fixture(scope="module")
def table(tok):
    return byte_table_for_tokenizer(tok)


@pytest.fixture(scope="module")
def scorers(table):
    return {name: jax.jit(lambda ids, n, gb, gp, name=name: device_rewards(
        ids, n, gb, gp, table, name)) for name in SCHEMES}


def _batch(tok, texts, gts, truncate=None):
    ids = np.full((B, T), tok.pad_id, np.int32)
    lens = np.zeros((B,), np.int32)
    gb = np.zeros((B, 4), np.float32)
    gp = np.zeros((B, 2, 2), np.float32)
    decoded = []
    for i, (text, (box, pts)) in enumerate(zip(texts, gts)):
        e = tok.encode(text)[:T]
        n = len(e) if truncate is None else min(len(e), truncate[i])
        ids[i, :len(e)] = e
        lens[i] = n
        gb[i], gp[i] = box, pts
        decoded.append(tok.decode(e[:n], skip_special_tokens=True))
    return ids, lens, gb, gp, decoded


def _other_script_digit(s):
    return any(ch.isdecimal() and not ch.isascii() for ch in s)


def _declined_int_string(v):
    """A points value whose [0] or [1] the host int()s where the device declines: a string
    of digits of other scripts (or of more than 7 significant digits), or a string value
    whose first characters are such digits."""
    if isinstance(v, str):
        return _other_script_digit(v[:2])
    if not isinstance(v, list):
        return False
    digits = ["".join(ch for ch in x if ch.isdecimal()) for x in v[:2] if isinstance(x, str)]
    return any(_other_script_digit(d) or len(d.lstrip("0")) > 7 for d in digits)


def documented_difference(text, name):
    """True where the README lets the device score below the host (exotic JSON etc.)."""
    if text.count("</think>") > 2:
        return True
    m = re.search(r"{[^}]+}", text)
    if not m:
        return False
    obj = m.group(0)
    pairs = []
    try:
        json.loads(obj, object_pairs_hook=lambda kv: pairs.extend(kv) or {})
    except ValueError:
        return False
    keys_escaped = any(re.search(r"\\u[dD][89a-fA-F]", k)
                       for k in re.findall(r'"((?:[^"\\]|\\.)*)"\s*:', obj))
    digits = [d.replace(".", "").lstrip("0") for d in re.findall(r"\d+(?:\.\d+)?", obj)]
    long_numbers = any(len(d) > 7 for d in digits)
    string_points = any("point" in k.lower() and _declined_int_string(v) for k, v in pairs)
    # soft format: len() 2 or 4 of a string value with escapes or non-ASCII characters
    soft_strings = name in ("seg", "seg_soft_acc") and any(
        ("\\" in lit or not lit.isascii()) and len(json.loads(f'"{lit}"', strict=False)) in (2, 4)
        for lit in re.findall(r':\s*"((?:[^"\\]|\\.)*)"', obj))
    return bool(keys_escaped or long_numbers or string_points or soft_strings or len(pairs) > 8
                or len(obj.encode()) > 256)


def _compare(scorers, tok, texts, gts, truncate=None):
    ids, lens, gb, gp, decoded = _batch(tok, texts, gts, truncate)
    for name, fn in scorers.items():
        out = jax.device_get(fn(ids, lens, gb, gp))
        for i, text in enumerate(decoded):
            ref = host_reward(text, gt_string(*gts[i]), name)
            got = {k: float(out[k][i]) for k in KEYS}
            if documented_difference(text, name):
                assert all(got[k] <= ref[k] + 2e-5 for k in KEYS), (name, text, got, ref)
            else:
                assert got == pytest.approx(ref, abs=2e-5), (name, text, gts[i])


@pytest.mark.slow
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(responses(), min_size=B, max_size=B), st.lists(st.integers(0, T), min_size=B,
                                                               max_size=B))
def test_matches_host_on_corpus(scorers, tok, cases, cuts):
    texts = [c[0] for c in cases]
    gts = [(c[1], c[2]) for c in cases]
    _compare(scorers, tok, texts, gts)
    _compare(scorers, tok, texts, gts, truncate=[c if c % 3 == 0 else T for c in cuts])


GOOD = ('<think>the left dog</think>\n<answer>{"bbox": [10,100,200,210], '
        '"points_1": [30,110], "points_2": [35,180]}</answer>')
GT = ([10, 100, 200, 210], [[30, 110], [35, 180]])


def test_hand_cases(scorers, tok):
    texts = [
        GOOD,
        GOOD + "<|im_end|>",  # special tokens are skipped as in the reference decode
        GOOD.replace("</answer>", ""),
        GOOD.replace('"bbox": [10,100,200,210]', '"bbox": [10,100,200,210,5]'),
        GOOD.replace("[35,180]", "[35,180]} {\"x\": 1"),
        GOOD.replace("<think>the", "<think>{a} the"),
        GOOD.replace("[30,110]", "[30.9,-0.0]"),
        GOOD.replace("[10,100,200,210]", "[true,100,200,210]"),
        GOOD.replace("[10,100,200,210]", "[-Infinity,-Infinity,Infinity,Infinity]"),
        GOOD.replace("[10,100,200,210]", "[NaN,100,200,210]"),
        GOOD.replace('"points_2"', '"points_1": [0,0], "points_2"'),
        GOOD.replace("\n", "\u3000\u2028 "),
        GOOD.replace("\n", "\u200b"),
        GOOD.replace("[30,110]", "[30,110,7]"),
        "",
        "<think></think><answer></answer>",
    ]
    _compare(scorers, tok, texts, [GT] * len(texts))


def test_exact_thresholds(scorers, tok):
    """Strict comparisons at exactly representable boundaries match the host."""
    texts = [
        GOOD.replace("[10,100,200,210]", "[10,100,200,321]"),  # IoU exactly 0.5 -> 0
        GOOD.replace("[10,100,200,210]", "[10,100,200,320]"),  # IoU 21201 / 42211 -> 1
        GOOD.replace("[10,100,200,210]", "[10,100,200,300]").replace(
            "[30,110]", "[90,190]").replace("[35,180]", "[95,260]"),  # distance exactly 100
        GOOD.replace("[10,100,200,210]", "[10,100,200,300]").replace(
            "[30,110]", "[90,190]").replace("[35,180]", "[95,259]"),  # distance < 100
        GOOD.replace("[10,100,200,210]", "[20,110,210,220]"),  # L1 exactly 10 -> 0
        GOOD.replace("[10,100,200,210]", "[19,109,209,219]"),  # L1 9 -> 1
    ]
    _compare(scorers, tok, texts, [GT] * len(texts))
    ids, lens, gb, gp, _ = _batch(tok, texts, [GT] * len(texts))
    out = jax.device_get(scorers["seg_strict"](ids, lens, gb, gp))
    np.testing.assert_array_equal(out["bbox_iou"][:2], [0.0, 1.0])
    np.testing.assert_array_equal(out["points_l1"][2:4], [0.0, 1.0])
    np.testing.assert_array_equal(out["bbox_l1"][4:6], [0.0, 1.0])


@pytest.mark.slow
def test_jit_vmap_and_sharded_batch(table, tok):
    mesh = make_mesh((4, 2, 1))
    texts = [GOOD, GOOD[:-3]] * 4
    ids, lens, gb, gp, _ = _batch(tok, texts + [""] * (B - len(texts)), [GT] * B)
    sharding = NamedSharding(mesh, P(("data", "fsdp")))
    args = [jax.device_put(x, sharding) for x in (ids, lens, gb, gp)]
    fn = jax.jit(lambda *a: device_rewards(*a, table, "seg_strict"))
    out = fn(*args)
    assert out["total"].sharding.spec == P(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(out["total"])[:8], [5.0, 4.0] * 4)
    # vmap over an extra leading axis (e.g. [prompts, group]) gives the same numbers.
    vm = jax.vmap(lambda i, n, b, p: device_rewards(i, n, b, p, table)["total"])
    got = vm(*(x.reshape(2, B // 2, *x.shape[1:]) for x in (ids, lens, gb, gp)))
    np.testing.assert_array_equal(np.asarray(got).reshape(-1), np.asarray(out["total"]))


def test_arbitrary_tokenizer_and_multibyte_tokens():
    """A toy vocabulary whose tokens straddle JSON syntax and UTF-8 characters."""
    pieces = [bytes([i]) for i in range(256)] + [
        b'"}', b"],", b'": [', b"</think>", b"<answer>{", b"}</answer>", b"\xe3\x80", b"\x80<",
        b'"bbox', b'_1": [3', b"0,1", b"<think>", b"x" * 64, b"<|im_end|>"]
    table = byte_table_from_token_bytes(pieces, drop_ids=[len(pieces) - 1])
    vocab = {p: i for i, p in enumerate(pieces)}

    def encode(data: bytes):  # greedy longest match
        out, i = [], 0
        while i < len(data):
            j = max(k for k in range(i + 1, len(data) + 1) if data[i:k] in vocab)
            out.append(vocab[data[i:j]])
            i = j
        return out

    texts = [GOOD.replace("\n", "\u3000") + "<|im_end|>", GOOD.replace("[30,110]", "[30,1]"),
             GOOD.replace('"points_2"', '"x"'), GOOD.replace("the left dog", "x" * 64 * 21)]
    ids = np.zeros((4, 160), np.int32)
    for i, t in enumerate(texts):
        e = encode(t.encode())
        ids[i, :len(e)] = e
    lens = response_lengths(jnp.asarray(ids), eos_ids=[len(pieces) - 1],
                            lengths=jnp.asarray([(r != 0).sum() for r in ids], jnp.int32))
    gb = jnp.tile(jnp.asarray(GT[0], jnp.float32), (4, 1))
    gp = jnp.tile(jnp.asarray(GT[1], jnp.float32), (4, 1, 1))
    out = jax.jit(lambda *a: device_rewards(*a, table))(jnp.asarray(ids), lens, gb, gp)
    for i, t in enumerate(texts[:3]):
        ref = host_reward(t.replace("<|im_end|>", ""), gt_string(*GT))
        assert {k: float(out[k][i]) for k in KEYS} == ref
    # Documented: a response longer than max_bytes (8 * T = 1280 bytes here) scores 0.
    assert host_reward(texts[3], gt_string(*GT))["total"] == 5.0
    assert float(out["total"][3]) == 0.0


def test_documented_differences_never_exceed_host(scorers, tok):
    """Exotic JSON the device declines: it scores 0 where the host may score 1, never more."""
    cases = [
        GOOD.replace('"points_2"', '"\\ud83d\\ude00": 0, "points_2"'),  # surrogate escape
        ('<think>a</think><answer>{"bbox": [0,0,200,210], "points_1": [3,3], '
         '"points_2": "\uff157"}</answer>'),              # host: int("\uff15"), int("7")
        GOOD.replace("[30,110]", "[30.00000001,110]"),     # > 7 significant digits
        GOOD.replace("[30,110]", '["\uff13\uff10", "110"]'),  # fullwidth digits: int() reads
        GOOD.replace('"points_2"', '"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"points_2"'),  # > 8 keys
        GOOD.replace("the left dog", "a</think>b</think>c"),  # > 2 closings before the pair
        GOOD.replace('"bbox"', '"bb\\u006fx"'),            # escaped key: exact, "bbox"
    ]
    gts = [GT, ([0, 0, 200, 210], [[3, 3], [5, 7]]), GT, GT, GT, GT, GT]
    expected_host = [(1, 1, 1, 1, 1), (1, 0, 1, 1, 1), (1, 1, 1, 1, 1), (1, 1, 1, 1, 1),
                     (1, 1, 1, 1, 1), (1, 1, 1, 1, 1), (1, 1, 1, 1, 1)]
    expected_device = [(1, 0, 0, 0, 0), (1, 0, 1, 1, 0), (1, 1, 1, 1, 0), (1, 1, 1, 1, 0),
                       (1, 0, 0, 0, 0), (0, 1, 1, 1, 1), (1, 1, 1, 1, 1)]
    ids, lens, gb, gp, decoded = _batch(tok, cases + [""] * (B - len(cases)), gts + [GT] * B)
    out = jax.device_get(scorers["seg_strict"](ids, lens, gb, gp))
    for i, text in enumerate(cases):
        host = host_reward(decoded[i], gt_string(*gts[i]))
        assert tuple(host[c] for c in COMPONENTS) == expected_host[i], (i, host)
        dev = tuple(float(out[c][i]) for c in COMPONENTS)
        assert dev == expected_device[i], (i, dev)
        assert all(d <= h for d, h in zip(dev, expected_host[i]))


STRING_POINTS_READ = [
    '["30", 110]', '[" 30 ", "110"]', '["+30", 110]', '["0030", "1_1_0"]',
    '["\\u00a030\\u3000", 110]', '["\u00a030\u3000", "\u2028110\u0085"]',
    '["\\t30\\n", 110]', '["\\u000b30\\f", "\\r110"]', '["\\u0033\\u0030", 110]',
    '["3\\u005f0", 110.7]', '[30, "\\u00311\\u0030"]', '["30", "110", "x"]']
STRING_POINTS_UNREAD = [
    '["30.0", 110]', '["3e1", 110]', '["3 0", 110]', '["_30", 110]', '["30_", 110]',
    '["3__0", 110]', '["", 110]', '["- 30", 110]', '["+-30", 110]', '["\\u200b30", 110]',
    '["\\u001c30", 110]', '["30x", 110]', '["0x1e", 110]', '["30", "\\b110"]', '["30"]']


def test_string_coordinates_read_as_python_int(scorers, tok):
    """Point coordinates given as strings go through int() on both paths: surrounding
    (Unicode) whitespace, a sign, underscores between digits, leading zeros and escapes are
    read; decimals, exponents, inner spaces, stray underscores and other characters are not."""
    texts = [GOOD.replace("[30,110]", v) for v in STRING_POINTS_READ + STRING_POINTS_UNREAD]
    gts = [GT] * len(texts)
    origin = ([0, 0, 200, 210], [[3, 3], [5, 7]])
    corner = '<think>a</think><answer>{"bbox": [0,0,200,210], "points_1": [3,3], "points_2": %s}</answer>'
    texts += [corner % '"57"', corner % '"\\u00357 more"', corner % '"5 7"', corner % '"5"',
              GOOD.replace("[10,100,200,210]", "[-50,100,200,210]").replace(
                  "[30,110]", '["-30", "110"]'),        # the sign is read: -30 is in the box
              GOOD.replace("[10,100,200,210]", '["10",100,200,210]')]  # bbox: no int()
    gts += [origin] * 4 + [GT, GT]
    expected_points = [1.0] * len(STRING_POINTS_READ) + [0.0] * len(STRING_POINTS_UNREAD) + [
        1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    for i in range(0, len(texts), B):
        chunk, chunk_gts, want = texts[i:i + B], gts[i:i + B], expected_points[i:i + B]
        ids, lens, gb, gp, decoded = _batch(tok, chunk, chunk_gts)
        for text, gt, w in zip(decoded, chunk_gts, want):
            assert host_reward(text, gt_string(*gt))["points_l1"] == w, text
            assert not any(documented_difference(text, name) for name in SCHEMES), text
        _compare(scorers, tok, chunk, chunk_gts)  # all components and schemes equal the host
        out = jax.device_get(scorers["seg_strict"](ids, lens, gb, gp))
        np.testing.assert_array_equal(out["points_l1"][:len(chunk)], want)
    assert host_reward(texts[-1], gt_string(*GT))["segmentation_format"] == 1.0


def test_gt_valid_and_errors(table):
    ids = jnp.zeros((2, 8), jnp.int32)
    with pytest.raises(ValueError, match="gt_bbox"):
        device_rewards(ids, jnp.zeros((2,), jnp.int32), jnp.zeros((2, 3)), jnp.zeros((2, 2, 2)),
                       table)
    with pytest.raises(KeyError, match="unknown reward"):
        device_rewards(ids, jnp.zeros((2,), jnp.int32), jnp.zeros((2, 4)), jnp.zeros((2, 2, 2)),
                       table, "nope")
    assert parse_ground_truth("garbage") == (None, None)


def test_rl_imports_without_heavy_packages():
    import subprocess
    import sys
    code = ("import sys, segzero_jax.rl, segzero_jax.models.qwen2_5_vl.tokenizer\n"
            "bad = [m for m in ('torch', 'transformers', 'tensorflow', 'grain', "
            "'tensorflow_datasets') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def _near_threshold_cases(count: int, tolerance: float):
    """Integer point sets whose mean best-pairing distance lies within `tolerance` of 100 (found
    by search: p1 walks the integer grid around the circle that makes the mean exactly 100),
    with the host reference's distance for each."""
    from segzero_jax.rl.reward_host import points_distance as host_distance
    rng = np.random.default_rng(7)
    n = 40000
    g = rng.integers(0, 840, (n, 2, 2))
    p0 = g[:, 0] + rng.integers(-60, 61, (n, 2))
    r = 200 - np.hypot(*(p0 - g[:, 0]).T)
    theta = rng.uniform(0, 2 * np.pi, n)
    centre = np.round(g[:, 1] + r[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)).astype(int)
    offsets = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)), -1).reshape(-1, 2)
    p1 = (centre[:, None] + offsets[None]).reshape(-1, 2)
    pred = np.stack([np.repeat(p0, len(offsets), 0), p1], 1)
    gt = np.repeat(g, len(offsets), 0)
    dist = lambda a, b: np.sqrt((a[:, 0] - b[:, 0]) ** 2 + (a[:, 1] - b[:, 1]) ** 2)  # noqa: E731
    mean = np.minimum(dist(pred[:, 0], gt[:, 0]) + dist(pred[:, 1], gt[:, 1]),
                      dist(pred[:, 0], gt[:, 1]) + dist(pred[:, 1], gt[:, 0])) / 2
    near = np.flatnonzero(np.abs(mean - 100) < tolerance)[:count]
    assert len(near) >= min(count, 1000), len(near)
    return [(pred[i], gt[i], host_distance(pred[i].tolist(), gt[i].tolist())) for i in near]


def test_points_threshold_is_exact_for_integer_coordinates():
    """Python's float64 decides `mean distance < 100`; the device agrees on every integer case
    within 1e-3 of the threshold, where float32 square roots alone get some wrong."""
    from segzero_jax.rl.reward_device import points_distance, points_distance_below_100
    cases = _near_threshold_cases(3000, 1e-3)
    # the case README names: 99.9999947 in float64, 100.0 in float32
    cases.append((np.array([[110, 122], [150, 211]]), np.array([[30, 110], [35, 180]]), 99.9999947))
    pred = jnp.asarray(np.stack([c[0] for c in cases]), jnp.float32)
    gt = jnp.asarray(np.stack([c[1] for c in cases]), jnp.float32)
    host = np.array([c[2] < 100 for c in cases])
    got = np.asarray(jax.jit(jax.vmap(points_distance_below_100))(pred, gt))
    np.testing.assert_array_equal(got, host)
    naive = np.asarray(jax.vmap(points_distance)(pred, gt) < 100)
    assert (naive != host).sum() > 0 and host.any() and not host.all()
    # exactly 100 (two 3-4-5 triangles scaled by 20) is not below it
    assert not bool(points_distance_below_100(jnp.asarray([[60.0, 80.0], [160.0, 180.0]]),
                                              jnp.asarray([[0.0, 0.0], [100.0, 100.0]])))
    # non-integer coordinates keep the float32 test
    assert bool(points_distance_below_100(jnp.asarray([[0.5, 0.0], [0.0, 0.0]]),
                                          jnp.asarray([[0.0, 0.0], [0.0, 0.0]])))


def test_points_threshold_end_to_end(scorers, tok):
    near = GOOD.replace("[10,100,200,210]", "[10,100,150,211]").replace(
        "[30,110]", "[110,122]").replace("[35,180]", "[150,211]")
    _compare(scorers, tok, [near], [GT])
    ids, lens, gb, gp, _ = _batch(tok, [near], [GT])
    assert float(jax.device_get(scorers["seg_strict"](ids, lens, gb, gp))["points_l1"][0]) == 1.0


def test_bbox_iou_threshold_is_exact_for_large_integer_boxes():
    """Near IoU 0.5 with areas above 2^24 (where float32 sums round) the device decides as the
    host's Python integers do; the pair the review found: IoU exactly 0.5 scored 1 in float32."""
    from segzero_jax.rl.reward_device import bbox_iou_above_half
    from segzero_jax.rl.reward_host import box_iou as host_iou
    rng = np.random.default_rng(3)
    preds, gts = [[0, 538, 4076, 3197]], [[0, 0, 4076, 2136]]
    for _ in range(400):
        # same x-range; gt rows [0, a], pred rows [b, c]: IoU > 0.5 iff 3(a - b + 1) > a + c - b + 2
        x2, a = int(rng.integers(3000, 8000)), int(rng.integers(1000, 5000))
        b = int(rng.integers(1, a // 2))
        c = 3 * (a - b + 1) - a + b - 2 + int(rng.integers(-1, 2))
        if c < 8192:
            preds.append([0, b, x2, c])
            gts.append([0, 0, x2, a])
    got = np.asarray(jax.vmap(bbox_iou_above_half)(jnp.asarray(preds, jnp.float32),
                                                   jnp.asarray(gts, jnp.float32)))
    host = np.array([host_iou(p, g) > 0.5 for p, g in zip(preds, gts)])
    np.testing.assert_array_equal(got, host)
    assert host.any() and not host.all() and len(preds) > 300
    # non-integer coordinates keep the float32 test
    assert bool(bbox_iou_above_half(jnp.asarray([0.5, 0.0, 10.0, 10.0]), jnp.asarray([0.0, 0.0, 10.0, 10.0])))
