"""Seg-Zero's single-object rewards as plain Python on decoded text (the host reference).

Mirrors `verl/utils/reward_score/seg_restrict.py` ("seg_strict", the released setting) and
`verl/utils/reward_score/seg.py` ("seg", soft answer format) of Seg-Zero, including their
quirks: the answer is the first `{[^}]+}` match parsed with `json.loads` (Python's parser:
duplicate keys keep the last value, NaN/Infinity accepted); any exception scores 0 for that
component; point coordinates go through `int()` (truncation) and the point lengths are not
checked by the accuracy reward; the gt string is read with `<box>(\\d+,\\d+),(...)</box>` and
`<points>(...),(...)</points>`.

Components (each 0/1 unless a soft-accuracy variant):
  thinking_format      `<think>.*?</think>\\s*<answer>.*?</answer>` fully matches (DOTALL)
  segmentation_format  strict: keys bbox (list of 4), points_1, points_2 (lists of 2);
                       soft: first key containing "bbox" (len 4), >= 2 other keys containing
                       "point" (first two of len 2)
  bbox_iou             IoU(pred, gt) > 0.5 with the +1-pixel area convention
  bbox_l1              mean |pred - gt| over the 4 coordinates < 10
  points_l1            both points in the predicted box and the best pairing's mean
                       distance to the gt points < 100
The "*_soft_acc" schemes replace the three accuracy indicators by raw IoU (0 when the union
is not positive), max(0, 1 - L1 / image_size) and, for points, max(0, 1 - d / image_size).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

COMPONENTS = ("thinking_format", "segmentation_format", "bbox_iou", "bbox_l1", "points_l1")
THINK_PATTERN = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
JSON_PATTERN = re.compile(r"{[^}]+}")
GT_BOX_PATTERN = re.compile(r"<box>\((\d+),(\d+)\),\((\d+),(\d+)\)</box>")
GT_POINTS_PATTERN = re.compile(r"<points>\((\d+),(\d+)\),\((\d+),(\d+)\)</points>")
DEFAULT_IMAGE_SIZE = 840.0

GroundTruth = tuple[Optional[list], Optional[list]]


def parse_ground_truth(solution: Any) -> GroundTruth:
    """(bbox [x1,y1,x2,y2] or None, points [[x,y],[x,y]] or None) from the published gt string
    `<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>`, a dict with "bbox"/"points", or
    a (bbox, points) pair of arrays. Unreadable parts are None (their rewards score 0)."""
    if isinstance(solution, str):
        box = GT_BOX_PATTERN.search(solution.strip())
        pts = GT_POINTS_PATTERN.search(solution)
        bbox = [int(g) for g in box.groups()] if box else None
        points = None
        if pts:
            v = [int(g) for g in pts.groups()]
            points = [[v[0], v[1]], [v[2], v[3]]]
        return bbox, points
    if isinstance(solution, dict):
        solution = (solution.get("bbox"), solution.get("points"))
    try:
        bbox_raw, points_raw = solution
    except (TypeError, ValueError):
        return None, None
    bbox = points = None
    try:
        arr = np.asarray(bbox_raw, dtype=np.float64)
        if arr.shape == (4,):
            bbox = [_as_number(x) for x in arr.tolist()]
    except (TypeError, ValueError):
        pass
    try:
        arr = np.asarray(points_raw, dtype=np.float64)
        if arr.shape == (2, 2):
            points = [[_as_number(x) for x in row] for row in arr.tolist()]
    except (TypeError, ValueError):
        pass
    return bbox, points


def _as_number(x: float) -> Union[int, float]:
    return int(x) if float(x).is_integer() else x


def first_json_object(response: str) -> dict:
    """`json.loads` of the first `{[^}]+}` match; raises when absent or invalid."""
    match = JSON_PATTERN.search(response)
    if not match:
        raise ValueError("no {...} in the response")
    return json.loads(match.group(0))


def thinking_format(response: str) -> float:
    """`seg_thinking_format_reward`: full match of the think/answer template."""
    return 1.0 if THINK_PATTERN.fullmatch(response) else 0.0


def _strict_format_ok(data: dict) -> bool:
    """`seg_restrict.seg_segmentation_format_reward.is_valid_format` after parsing."""
    for key in ("bbox", "points_1", "points_2"):
        if key not in data:
            return False
    if not isinstance(data["bbox"], list) or len(data["bbox"]) != 4:
        return False
    return all(isinstance(data[k], list) and len(data[k]) == 2 for k in ("points_1", "points_2"))


def _soft_format_ok(data: dict) -> bool:
    """`seg.seg_segmentation_format_reward.is_valid_format` after parsing."""
    bbox_key, points_keys = None, []
    for key in data.keys():
        if "bbox" in key.lower() and bbox_key is None:
            bbox_key = key
        elif "point" in key.lower():
            points_keys.append(key)
    if not (bbox_key and len(points_keys) >= 2):
        return False
    if len(data[bbox_key]) != 4:
        return False
    return all(len(data[k]) == 2 for k in points_keys[:2])


def _strict_bbox(data: dict) -> Any:
    """`seg_restrict`: the value of the key "bbox"."""
    return data["bbox"]


def _strict_points(data: dict) -> tuple[Any, Any]:
    """`seg_restrict.seg_point_l1_reward`: the values of "points_1" and "points_2"."""
    return data["points_1"], data["points_2"]


def _soft_bbox(data: dict) -> Any:
    """`seg`: the value of the first key containing "bbox" (case-insensitive)."""
    bbox_key = next((k for k in data.keys() if "bbox" in k.lower()), None)
    if not bbox_key:
        raise KeyError("no key containing 'bbox'")
    return data[bbox_key]


def _soft_points(data: dict) -> tuple[Any, Any]:
    """`seg.seg_point_l1_reward`: the first two keys containing "points" (bbox key included)."""
    keys = [k for k in data.keys() if "points" in k.lower()][:2]
    if len(keys) != 2:
        raise KeyError("fewer than two keys containing 'points'")
    return data[keys[0]], data[keys[1]]


def box_iou(box1: Sequence, box2: Sequence) -> float:
    """`seg_iou_reward.iou`: +1-pixel areas; raises ZeroDivisionError on a zero union."""
    ix1, iy1 = max(box1[0], box2[0]), max(box1[1], box2[1])
    ix2, iy2 = min(box1[2], box2[2]), min(box1[3], box2[3])
    inter = (ix2 - ix1 + 1) * (iy2 - iy1 + 1) if ix1 < ix2 and iy1 < iy2 else 0
    area1 = (box1[2] - box1[0] + 1) * (box1[3] - box1[1] + 1)
    area2 = (box2[2] - box2[0] + 1) * (box2[3] - box2[1] + 1)
    return float(inter) / (area1 + area2 - inter)


def box_l1(box1: Sequence, box2: Sequence) -> float:
    """`seg_box_l1_reward.l1_distance`: mean absolute coordinate difference."""
    return sum(abs(box1[i] - box2[i]) for i in range(4)) / 4


def points_distance(pred: Sequence, gt: Sequence) -> float:
    """`seg_point_l1_reward.points_distance`: mean Euclidean distance of the better pairing."""
    d = lambda a, b: math.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)  # noqa: E731
    return min(d(pred[0], gt[0]) + d(pred[1], gt[1]), d(pred[0], gt[1]) + d(pred[1], gt[0])) / 2


def _in_box(point: Sequence, bbox: Sequence) -> bool:
    return bbox[0] <= point[0] <= bbox[2] and bbox[1] <= point[1] <= bbox[3]


def _guard(fn: Callable[[], float]) -> float:
    """The reference's `try: ... except Exception: pass; return 0.0`."""
    try:
        return float(fn())
    except Exception:  # noqa: BLE001 - mirrors the reference exactly
        return 0.0


def score_components(response: str, solution: Any, soft_format: bool = False,
                     soft_accuracy: bool = False,
                     image_size: float = DEFAULT_IMAGE_SIZE) -> dict[str, float]:
    """All reward components and their sum ("total") for one response. Never raises."""
    gt_bbox, gt_points = parse_ground_truth(solution)
    bbox_of = _soft_bbox if soft_format else _strict_bbox
    points_of = _soft_points if soft_format else _strict_points

    def fmt() -> float:
        data = first_json_object(response)
        return 1.0 if (_soft_format_ok if soft_format else _strict_format_ok)(data) else 0.0

    def bbox_with_len4() -> Sequence:
        bbox = bbox_of(first_json_object(response))
        if gt_bbox is None or len(bbox) != 4:
            raise ValueError("no usable bbox")
        return bbox

    def iou() -> float:
        value = box_iou(bbox_with_len4(), gt_bbox)
        if soft_accuracy:
            return value if value > 0 else 0.0
        return 1.0 if value > 0.5 else 0.0

    def l1() -> float:
        value = box_l1(bbox_with_len4(), gt_bbox)
        if soft_accuracy:
            return max(0.0, 1.0 - value / image_size)
        return 1.0 if value < 10 else 0.0

    def points() -> float:
        data = first_json_object(response)
        bbox = bbox_of(data)
        len4 = len(bbox) == 4
        p1, p2 = points_of(data)
        if gt_points is None:
            raise ValueError("no gt points")
        p1, p2 = [int(p1[0]), int(p1[1])], [int(p2[0]), int(p2[1])]
        if not len4:  # the reference leaves content_bbox unbound: NameError -> 0
            raise ValueError("no usable bbox")
        if not (_in_box(p1, bbox) and _in_box(p2, bbox)):
            return 0.0
        dist = points_distance([p1, p2], gt_points)
        if soft_accuracy:
            return max(0.0, 1.0 - dist / image_size)
        return 1.0 if dist < 100 else 0.0

    out = {
        "thinking_format": _guard(lambda: thinking_format(response)),
        "segmentation_format": _guard(fmt),
        "bbox_iou": _guard(iou),
        "bbox_l1": _guard(l1),
        "points_l1": _guard(points),
    }
    out["total"] = float(sum(out[c] for c in COMPONENTS))
    return out


HOST_REWARDS: dict[str, dict[str, bool]] = {
    "seg_strict": dict(soft_format=False, soft_accuracy=False),
    "seg": dict(soft_format=True, soft_accuracy=False),
    "seg_strict_soft_acc": dict(soft_format=False, soft_accuracy=True),
    "seg_soft_acc": dict(soft_format=True, soft_accuracy=True),
}


def host_reward(response: str, solution: Any, name: str = "seg_strict",
                image_size: float = DEFAULT_IMAGE_SIZE) -> dict[str, float]:
    """Reward components for one decoded response under the scheme `name` (HOST_REWARDS)."""
    if name not in HOST_REWARDS:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(HOST_REWARDS)}")
    if not isinstance(response, str):
        response = ""
    return score_components(response, solution, image_size=image_size, **HOST_REWARDS[name])
