"""Seg-Zero's evaluation protocol: the answer parser, I / U with ignore regions, gIoU / cIoU.

The parser cases are written from Seg-Zero's `evaluation_scripts/evaluation.py`
(`extract_bbox_points_think`): `re.search(r'{[^}]+}')` then `json.loads`; the first key with
'bbox' in its lower-cased name, used when its len() is 4; the first two keys with 'points';
each coordinate `round(int(v) * factor)`; the reasoning from `re.search(r'<think>([^<]+)</think>')`;
any exception (or a name left unbound) makes the sample a failure.
"""

import json

import numpy as np
import pytest

from segzero_jax.evaluation import answer as A
from segzero_jax.evaluation import metrics as M
from segzero_jax.evaluation.examples import EvalExample, RecordExamples, decode_record
from segzero_jax.evaluation.runner import Evaluator, score_batch, summarize
from segzero_jax.segment import Segmentation

THINK = "<think>the red one is left</think>"


def answer(obj: str, think: str = THINK) -> str:
    return f"{think}<answer>{obj}</answer>"


GOOD = '{"bbox": [10,100,200,210], "points_1": [30,110], "points_2": [35,180]}'

# (response, expected (bbox, points, think) with x factor 2.0, y factor 0.5; None = failure)
REFERENCE_CASES = [
    (answer(GOOD), ((20, 50, 400, 105), ((60, 55), (70, 90)), "the red one is left")),
    # int() truncates before the scale: 10.9 -> 10 -> 20, not round(21.8) = 22
    (answer('{"bbox": [10.9,100.7,200,210], "points_1": [30.99,110], "points_2": [35,180.6]}'),
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "the red one is left")),
    # numeric strings, padded ones and booleans go through int()
    (answer('{"bbox": ["10"," 100 ",200,210], "points_1": [true,110], "points_2": [35,"180"]}'),
     ((20, 50, 400, 105), ((2, 55), (70, 90)), "the red one is left")),
    # keys by case-insensitive substring; extra point entries and a third points key ignored
    (answer('{"BBox_2d": [10,100,200,210], "my_points": [30,110,7], "Points_b": [35,180], "points_c": [1,1]}'),
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "the red one is left")),
    # a four-character string is a box of one digit per coordinate
    (answer('{"bbox": "1234", "points_1": [30,110], "points_2": [35,180]}'),
     ((2, 1, 6, 2), ((60, 55), (70, 90)), "the red one is left")),
    # duplicate keys: json keeps the last value
    (answer('{"bbox": [0,0,0,0], "points_1": [30,110], "points_2": [35,180], "bbox": [10,100,200,210]}'),
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "the red one is left")),
    # inverted and negative boxes are kept as answered
    (answer('{"bbox": [200,210,-10,100], "points_1": [30,110], "points_2": [35,180]}'),
     ((400, 105, -20, 50), ((60, 55), (70, 90)), "the red one is left")),
    # the think block may come anywhere; the first well-formed one counts
    (answer(GOOD, think="") + "<think>later</think>",
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "later")),
    ("<think>a<b</think><think>second</think>" + GOOD,
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "second")),
    # the object is searched in the whole response, the think block included
    ('<think>I answer ' + GOOD + ' now</think><answer>nothing</answer>',
     ((20, 50, 400, 105), ((60, 55), (70, 90)), "I answer " + GOOD + " now")),
    # failures
    (answer("{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}"), None),  # quotes
    (answer('{"bbox": [10,100,200,210], "point_1": [30,110], "point_2": [35,180]}'), None),  # singular
    (answer('{"bbox": [10,100,200,210], "points_1": [30,110]}'), None),  # one point
    (answer('{"points_1": [30,110], "points_2": [35,180]}'), None),  # no box
    (answer('{"bbox": [10,100,200,210,5], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox_old": [1,2], "bbox": [10,100,200,210], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": null, "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": ["12.5",100,200,210], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": [NaN,100,200,210], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": [Infinity,100,200,210], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": [1' + "0" * 400 + ',100,200,210], "points_1": [30,110], "points_2": [35,180]}'), None),
    (answer('{"bbox": [10,100,200,210], "points_1": {"x": 3}, "points_2": [35,180]}'), None),
    (answer('{"bbox": [10,100,200,210], "points_1": [30], "points_2": [35,180]}'), None),
    (answer('{"bbox": [10,100,200,210], "meta": {"a": 1}, "points_1": [30,110], "points_2": [35,180]}'), None),
    ("<think>{x}</think><answer>" + GOOD + "</answer>", None),  # first {...} is not JSON
    (answer(GOOD, think=""), None),  # no think block
    (answer(GOOD, think="<think></think>"), None),  # empty reasoning
    (answer(GOOD, think="<think>3 < 4</think>"), None),  # '<' inside
    (answer(GOOD, think="<think>unclosed"), None),
    ("", None),
    ("<think>x</think><answer></answer>", None),
    ("{" + "[" * 100000 + "}", None),  # deep nesting must not escape as RecursionError
]


@pytest.mark.parametrize("text,expected", REFERENCE_CASES)
def test_reference_parser_cases(text, expected):
    if expected is None:
        with pytest.raises(A.AnswerError):
            A.parse_segzero(text, 2.0, 0.5)
    else:
        got = A.parse_segzero(text, 2.0, 0.5)
        assert (got.bbox, got.points, got.think) == expected


def test_rescaling_is_int_then_factor_then_python_round():
    # factor 0.5: 1 -> 0.5 -> 0, 3 -> 1.5 -> 2, 5 -> 2.5 -> 2, 7 -> 3.5 -> 4 (half to even)
    got = A.parse_segzero(answer('{"bbox": [1,3,5,7], "points_1": [9,11], "points_2": [0,1]}'), 0.5, 0.5)
    assert got.bbox == (0, 2, 2, 4) and got.points == ((4, 6), (0, 0))
    # factors are width / size and height / size of the original image
    assert A.scale_factors(1000, 500, 840) == (1000 / 840, 500 / 840)
    text = answer('{"bbox": [420,420,840,840], "points_1": [1,839], "points_2": [839,1]}')
    got = A.parse_answer(text, width=1000, height=500, size=840)
    assert got.bbox == (500, 250, 1000, 500)
    assert got.points == ((round(1000 / 840), round(839 * (500 / 840))), (round(839 * (1000 / 840)), round(500 / 840)))
    with pytest.raises(ValueError, match="positive"):
        A.scale_factors(0, 10, 840)


def test_non_text_responses_fail_without_raising_anything_else():
    for value in (None, 3, b"<think>x</think>"):
        for parser in A.PARSERS.values():
            with pytest.raises(A.AnswerError):
                parser(value, 1.0, 1.0)


def test_lenient_parser_is_opt_in_and_more_forgiving():
    text = ("<think>the box is <b>here</b></think><answer>{'bbox': [10.6,100,200,210], "
            "'point_1': [30,110], 'point_2': [35,180]}</answer>")
    with pytest.raises(A.AnswerError):
        A.parse_answer(text, 840, 840, 840)  # the default is the reference
    got = A.parse_answer(text, 840, 840, 840, parser="lenient")
    assert got.bbox == (11, 100, 200, 210) and got.points == ((30, 110), (35, 180))
    assert got.think == "the box is <b>here</b>"
    # the object inside <answer> wins over an earlier one in the reasoning; no think is fine
    got = A.parse_lenient('{"bbox": [1,1,1,1], "points": [0,0], "points_2": [0,0]}<answer>' + GOOD + "</answer>", 1, 1)
    assert got.bbox == (10, 100, 200, 210) and got.think == ""
    for bad in ('<answer>{"bbox": [1,2,3], "points_1": [1,1], "points_2": [1,1]}</answer>',
                '<answer>{"bbox": [1,2,3,"x"], "points_1": [1,1], "points_2": [1,1]}</answer>',
                '<answer>{"bbox": [1,2,3,NaN], "points_1": [1,1], "points_2": [1,1]}</answer>',
                '<answer>{"bbox": [1,2,3,4], "points_1": [1,1,1], "points_2": [1,1]}</answer>'):
        with pytest.raises(A.AnswerError):
            A.parse_lenient(bad, 1, 1)
    with pytest.raises(ValueError, match="unknown answer parser"):
        A.get_parser("loose")


# --------------------------------------------------------------------------- I / U


def _masks():
    target = np.zeros((4, 5), bool)
    target[1:3, 1:4] = True            # 6 pixels
    ignore = np.zeros((4, 5), bool)
    ignore[0, :] = True                # 5 pixels, disjoint from the target
    pred = np.zeros((4, 5), bool)
    pred[0:2, 0:2] = True              # 4 pixels: 1 on the target, 2 on the ignore row, 1 elsewhere
    return pred, target, ignore


def test_segzero_protocol_counts_ignore_pixels_as_ground_truth():
    pred, target, ignore = _masks()
    rule = M.get_protocol("segzero")
    # truth = target | ignore (11 px); I = 1 (target) + 2 (ignore row) = 3; U = 11 + 1 = 12
    assert rule.intersection_union(pred, target, ignore) == (3, 12)
    assert rule.failure(target, ignore) == (0, 11)
    assert rule.intersection_union(pred, target) == (1, 9)  # no ignore mask
    assert rule.iou(3, 12) == 0.25 and rule.iou(0, 0) == 0.0


def test_lisa_protocol_excludes_ignore_pixels_from_both():
    pred, target, ignore = _masks()
    rule = M.get_protocol("lisa")
    # ignore row dropped: I = 1, U = 6 (target) + 1 (pred pixel (1, 0)) = 7
    assert rule.intersection_union(pred, target, ignore) == (1, 7)
    assert rule.failure(target, ignore) == (0, 6)
    overlap = ignore.copy()
    overlap[1, 1] = True  # an ignore pixel on the target leaves the ground truth
    assert rule.failure(target, overlap) == (0, 5)
    assert rule.iou(0, 0) == 1.0  # LISA's "no object" convention


def test_protocol_errors_name_the_mask():
    pred, target, ignore = _masks()
    with pytest.raises(ValueError, match="predicted mask has shape"):
        M.get_protocol("segzero").intersection_union(pred[:2], target, ignore)
    with pytest.raises(ValueError, match="ignore mask"):
        M.get_protocol("segzero").failure(target, ignore[:, :2])
    with pytest.raises(ValueError, match="unknown ignore-region protocol"):
        M.get_protocol("coco")


def test_giou_is_the_mean_of_ious_and_ciou_the_ratio_of_sums():
    got = M.summarize([3, 0, 10], [12, 8, 10], [0.25, 0.0, 1.0])
    assert got["giou"] == pytest.approx((0.25 + 0 + 1) / 3)
    assert got["ciou"] == pytest.approx(13 / 30)
    assert got["num_samples"] == 3
    assert M.summarize([], [], [])["giou"] == 0.0


# --------------------------------------------------------------------------- scoring a batch


class BoxSegmenter:
    """Stands in for SAM2: the mask is the answered box (inclusive), clipped to the image."""

    def __init__(self, fail_ids=()):
        self.calls = []

    def __call__(self, images, boxes, points):
        self.calls.append(len(images))
        out = []
        for im, (x1, y1, x2, y2) in zip(images, boxes):
            mask = np.zeros(im.shape[:2], bool)
            mask[max(y1, 0):max(y2 + 1, 0), max(x1, 0):max(x2 + 1, 0)] = True
            out.append(Segmentation(mask, 0.9))
        return out


def _example(sample_id, target_box, size=(20, 40), ignore_box=None):
    h, w = size
    mask = np.zeros((h, w), bool)
    x1, y1, x2, y2 = target_box
    mask[y1:y2 + 1, x1:x2 + 1] = True
    ignore = None
    if ignore_box is not None:
        ignore = np.zeros((h, w), bool)
        a, b, c, d = ignore_box
        ignore[b:d + 1, a:c + 1] = True
    return EvalExample(sample_id, "the thing", np.zeros((h, w, 3), np.uint8), mask, ignore)


def _response(box, size=840):
    obj = {"bbox": list(box), "points_1": [box[0], box[1]], "points_2": [box[2], box[3]]}
    return answer(json.dumps(obj))


def test_score_batch_counts_failures_with_the_ground_truth_area():
    # a 40 x 20 image answered on a 40-pixel frame: factors 1.0 and 0.5
    examples = [_example("a", (0, 0, 9, 9)), _example("b", (10, 0, 19, 9)), _example("c", (0, 0, 3, 3))]
    texts = [_response((0, 0, 9, 19)),     # y halved -> box (0, 0, 9, 10): 10 x 11 px, target 10 x 10
             "no answer at all",
             _response((0, 0, 3, 7))]
    seg = BoxSegmenter()
    got = score_batch(examples, texts, seg, image_size=40)
    assert seg.calls == [2]  # the failed parse never reaches SAM2
    assert [s.bbox for s in got] == [[0, 0, 9, 10], None, [0, 0, 3, 4]]
    assert (got[0].intersection, got[0].union) == (100, 110)
    assert (got[1].intersection, got[1].union, got[1].iou) == (0, 100, 0.0)
    assert got[1].parse_error and got[1].think == ""
    assert (got[2].intersection, got[2].union) == (16, 20)
    metrics = summarize(got)
    assert metrics["parse_failures"] == 1 and metrics["num_samples"] == 3
    assert metrics["giou"] == pytest.approx((100 / 110 + 0 + 16 / 20) / 3)
    assert metrics["ciou"] == pytest.approx((100 + 16) / (110 + 100 + 20))
    assert json.loads(json.dumps(got[0].to_json()))["points"] == [[0, 0], [9, 10]]


def test_sam2_failures_score_like_parse_failures():
    example = _example("a", (0, 0, 9, 9), ignore_box=(30, 0, 39, 4))

    class Failing:
        def __call__(self, images, boxes, points):
            return [Segmentation(None, float("nan"), "prompt coordinates beyond float32 range")]

    (got,) = score_batch([example], [_response((0, 0, 9, 19))], Failing(), image_size=40)
    assert (got.intersection, got.union) == (0, 100 + 50) and got.sam2_error
    (lisa,) = score_batch([example], [_response((0, 0, 9, 19))], Failing(), image_size=40, protocol="lisa")
    assert (lisa.intersection, lisa.union) == (0, 100)
    assert summarize([got])["sam2_failures"] == 1


def test_evaluator_scores_given_responses_and_names_unknown_ids():
    examples = [_example("a", (0, 0, 9, 9)), _example("b", (10, 0, 19, 9))]
    ev = Evaluator(examples, BoxSegmenter(), image_size=40, batch_size=1, progress=False)
    result = ev.score_responses({"b": _response((10, 0, 19, 19)), "a": "garbage"})
    assert [s.id for s in result.samples] == ["a", "b"]  # split order
    assert result.metrics["parse_failures"] == 1 and result.metrics["missing_responses"] == 0
    with pytest.raises(ValueError, match="'zz'"):
        ev.score_responses({"a": "x", "b": "y", "zz": "z"})
    with pytest.raises(ValueError, match="no response for 1 sample"):
        ev.score_responses({"a": "x"})
    partial = ev.score_responses({"a": "x"}, allow_missing=True)
    assert partial.metrics["num_samples"] == 1 and partial.metrics["missing_responses"] == 1
    with pytest.raises(ValueError, match="policy_config"):
        ev.generate({})


def test_evaluator_generates_in_padded_batches():
    """A stand-in generator receives full batches (the last padded) and answers the real rows."""
    from segzero_jax.evaluation.generation import Response
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    examples = [_example(k, (0, 0, 9, 9), size=(56, 56)) for k in "abc"]
    seen = []

    def generator(params, batch):
        seen.append((batch["input_ids"].shape, batch["pixel_values"].shape, batch["num_real"]))
        return [Response(_response((0, 0, 9, 9), 56), 12, True)] * batch["num_real"]

    ev = Evaluator(examples, BoxSegmenter(), tokenizer=QwenTokenizer.default(), generator=generator,
                   image_size=56, batch_size=2, progress=False)
    result = ev.generate(None)
    assert [s[2] for s in seen] == [2, 1] and seen[0][:2] == seen[1][:2]
    assert seen[0][1] == (2 * 16, 1176)  # 56 x 56 -> 4 x 4 patches per image
    assert result.metrics["giou"] == 1.0 and result.metrics["mean_response_tokens"] == 12
    assert result.metrics["truncated_responses"] == 0 and result.samples[0].stopped


def test_records_keep_first_questions_and_check_shapes():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(buf, format="PNG")
    base = {"image": buf.getvalue(), "mask": np.ones((6, 8), bool), "height": 6, "width": 8,
            "question": b"what?", "ignore_mask": np.zeros((6, 8), bool)}
    source = [dict(base, image_id=b"img1", question_index=0), dict(base, image_id=b"img1", question_index=1),
              dict(base, image_id=b"img2", question_index=0)]
    examples = RecordExamples(source)
    assert examples.ids == ["img1", "img2"] and examples.index("img2") == 1
    ex = examples[1]
    assert ex.id == "img2" and ex.question == "what?" and ex.image.shape == (6, 8, 3)
    with pytest.raises(ValueError, match="'img1' occurs twice"):
        RecordExamples(source + [dict(base, image_id=b"img1")])
    with pytest.raises(ValueError, match="no 'mask' field"):
        decode_record({k: v for k, v in source[0].items() if k != "mask"})
    with pytest.raises(ValueError, match="mask \\(5, 8\\) differs"):
        decode_record(dict(source[0], mask=np.ones((5, 8), bool)))
    with pytest.raises(ValueError, match="cannot decode its image"):
        decode_record(dict(source[0], image=b"not an image"))
