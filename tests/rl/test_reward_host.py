"""Host reference rewards: hand-computed cases for each quirk of Seg-Zero's reward code."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from reward_corpus import gt_string, responses
from segzero_jax.rl.reward_host import (COMPONENTS, box_iou, host_reward, parse_ground_truth,
                                        points_distance, thinking_format)

GT = "<box>(10,100),(200,210)</box><points>(30,110),(35,180)</points>"
GOOD = ('<think>look</think>\n<answer>{"bbox": [10,100,200,210], "points_1": [30,110], '
        '"points_2": [35,180]}</answer>')


def scores(response, solution=GT, name="seg_strict"):
    out = host_reward(response, solution, name)
    return tuple(out[c] for c in COMPONENTS)


def test_perfect_answer_scores_five():
    assert host_reward(GOOD, GT)["total"] == 5.0
    assert host_reward(GOOD, {"bbox": [10, 100, 200, 210], "points": [[30, 110], [35, 180]]},
                       "seg")["total"] == 5.0
    arrays = (np.array([10, 100, 200, 210], np.float32), np.array([[30, 110], [35, 180]]))
    assert host_reward(GOOD, arrays)["total"] == 5.0


@pytest.mark.parametrize("text,expected", [
    ("<think>a</think><answer>b</answer>", 1.0),
    ("<think>a</think> \u3000\n<answer>b</answer>", 1.0),   # \s is Unicode whitespace
    ("<think>a</think>x<answer>b</answer>", 0.0),
    ("<think>a</think><answer>b</answer>\n", 0.0),           # full match: nothing after
    (" <think>a</think><answer>b</answer>", 0.0),
    ("<think></think><answer></answer>", 1.0),
    ("<think>a</think>\u200b<answer>b</answer>", 0.0),       # zero-width space is not \s
])
def test_thinking_format(text, expected):
    assert thinking_format(text) == expected


def test_strict_format_rules():
    assert scores(GOOD)[1] == 1.0
    reordered = GOOD.replace('"bbox": [10,100,200,210], ', "").replace(
        "}</answer>", ', "bbox": [10,100,200,210], "extra": "x"}</answer>')
    assert scores(reordered) == (1.0,) * 5
    assert scores(GOOD.replace("points_2", "points_3"))[1] == 0.0
    assert scores(GOOD.replace("[35,180]", "[35,180,1]"))[1:] == (0.0, 1.0, 1.0, 1.0)  # len unchecked
    assert scores(GOOD.replace("<think>look", "<think>{look}"))[1:] == (0.0,) * 4  # first {...}
    assert scores(GOOD.replace('"', "'")) == (1.0, 0.0, 0.0, 0.0, 0.0)          # not JSON
    assert scores(GOOD.replace("[10,100,200,210]", '"abcd"'))[1:] == (0.0,) * 4


def test_soft_format_rules():
    soft = GOOD.replace('"bbox"', '"BBox_2d"').replace('"points_1"', '"Point_a"')
    assert scores(soft, name="seg_strict")[1] == 0.0
    # format: key containing "point"; points accuracy needs two keys containing "points"
    assert scores(soft, name="seg") == (1.0, 1.0, 1.0, 1.0, 0.0)
    # the soft format takes len() of strings too
    assert scores(GOOD.replace("[10,100,200,210]", '"abcd"'), name="seg")[1] == 1.0


def test_duplicate_keys_keep_last_value():
    dup = GOOD.replace("}</answer>", ', "bbox": [0,0,5,5]}</answer>')
    assert scores(dup)[2:4] == (0.0, 0.0)


def test_accuracy_thresholds():
    # IoU with +1 areas: pred [10,100,200,210] vs gt shifted by 60 in x.
    assert box_iou([0, 0, 9, 9], [0, 0, 9, 9]) == 1.0
    inter = (200 - 70 + 1) * 111
    union = 2 * 191 * 111 - inter
    assert box_iou([10, 100, 200, 210], [70, 100, 260, 210]) == pytest.approx(inter / union)
    moved = GOOD.replace("[10,100,200,210]", "[19,109,209,219]")   # L1 = 9
    assert scores(moved)[2:4] == (1.0, 1.0)
    moved = GOOD.replace("[10,100,200,210]", "[20,110,210,220]")   # L1 = 10 -> not < 10
    assert scores(moved)[3] == 0.0
    # points: the better pairing; int() truncation; both inside the predicted box
    assert points_distance([[35, 180], [30, 110]], [[30, 110], [35, 180]]) == 0.0
    assert scores(GOOD.replace("[30,110]", "[30.9,110.7]"))[4] == 1.0
    assert scores(GOOD.replace("[30,110]", "[5,110]"))[4] == 0.0   # outside the box
    assert scores(GOOD.replace("[30,110]", "[true,110]").replace("[10,100", "[0,100"))[4] == 1.0


def test_exact_threshold_boundaries():
    """Seg-Zero's comparisons are strict: IoU > 0.5, mean L1 < 10, mean distance < 100; the
    box test for points is inclusive (<=) on every edge. Values hand-derived from the gt."""
    acc = lambda text: scores(text)[2:]  # noqa: E731  (bbox_iou, bbox_l1, points_l1)
    # gt area 191 * 111 = 21201; a pred box containing it with area 191 * 222 = 2 * 21201
    # gives IoU exactly 0.5 (not > 0.5); one row less gives 21201 / 42211 > 0.5.
    assert box_iou([10, 100, 200, 321], [10, 100, 200, 210]) == 0.5
    assert acc(GOOD.replace("[10,100,200,210]", "[10,100,200,321]"))[0] == 0.0
    assert acc(GOOD.replace("[10,100,200,210]", "[10,100,200,320]"))[0] == 1.0
    # both points moved by (60, 80): each 100 away, the swapped pairing is farther -> 100.
    far = GOOD.replace("[10,100,200,210]", "[10,100,200,300]").replace(
        "[30,110]", "[90,190]")
    assert points_distance([[90, 190], [95, 260]], [[30, 110], [35, 180]]) == 100.0
    assert acc(far.replace("[35,180]", "[95,260]"))[2] == 0.0
    assert acc(far.replace("[35,180]", "[95,259]"))[2] == 1.0
    # float64 like Python: (sqrt(6544) + sqrt(14186)) / 2 = 99.9999947 < 100 (it rounds to
    # 100.0 in float32); both points on the predicted box's right/bottom edges count inside.
    near = GOOD.replace("[10,100,200,210]", "[10,100,150,211]").replace(
        "[30,110]", "[110,122]").replace("[35,180]", "[150,211]")
    assert 99.99999 < points_distance([[110, 122], [150, 211]], [[30, 110], [35, 180]]) < 100
    assert acc(near)[2] == 1.0
    assert acc(near.replace("[10,100,150,211]", "[10,100,150,210]"))[2] == 0.0  # y 211 > 210
    assert acc(near.replace("[10,100,150,211]", "[111,100,150,211]"))[2] == 0.0  # x 110 < 111


def test_soft_accuracy_variant():
    out = host_reward(GOOD.replace("[10,100,200,210]", "[20,100,200,210]"), GT,
                      "seg_strict_soft_acc")
    assert out["bbox_iou"] == pytest.approx(181 / 191)
    assert out["bbox_l1"] == pytest.approx(1 - 2.5 / 840)
    assert out["points_l1"] == pytest.approx(1.0)


def test_ground_truth_parsing():
    assert parse_ground_truth(GT) == ([10, 100, 200, 210], [[30, 110], [35, 180]])
    assert parse_ground_truth("<box>(1,2),(3,4)</box>") == ([1, 2, 3, 4], None)
    assert parse_ground_truth(None) == (None, None)
    assert parse_ground_truth(([1, 2, 3], [[0, 0], [1, 1]])) == (None, [[0, 0], [1, 1]])
    assert scores(GOOD, "<box>(10,100),(200,210)</box>") == (1.0, 1.0, 1.0, 1.0, 0.0)


@settings(max_examples=150, deadline=None)
@given(responses(), st.sampled_from(["seg_strict", "seg", "seg_soft_acc"]))
def test_never_raises_and_bounded(case, name):
    text, box, pts = case
    out = host_reward(text, gt_string(box, pts), name)
    assert set(out) == set(COMPONENTS) | {"total"}
    assert all(0.0 <= out[c] <= 1.0 for c in COMPONENTS)
    assert out["thinking_format"] == float(bool(re.fullmatch(
        r"<think>.*?</think>\s*<answer>.*?</answer>", text, re.DOTALL)))


@pytest.mark.parametrize("junk", [None, 3, b"bytes", "{" * 1000, "\x00\ud800", "}" + "{" * 3])
def test_malformed_input_scores_zero(junk):
    out = host_reward(junk, GT)
    assert out["segmentation_format"] == 0.0 and out["total"] <= 1.0
