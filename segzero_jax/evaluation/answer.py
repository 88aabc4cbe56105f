"""The policy's answer -> a box and two points on the original image (Seg-Zero's evaluation parser).

Reference: `extract_bbox_points_think` of Seg-Zero's `evaluation_scripts/evaluation.py` (the same
function is in its `inference_scripts/infer.py`). Its rules, reproduced by `parse_segzero`:

  * the JSON object is the first match of ``{[^}]+}`` anywhere in the response (inside
    ``<think>`` too; a nested object is cut at its first ``}``) and must load with `json.loads`
    (single-quoted keys fail; duplicate keys keep the last value);
  * the box is the value of the FIRST key containing ``bbox`` (case-insensitive substring:
    ``bbox_2d``, ``BBox`` count), used only when its ``len()`` is 4; the points are the values of
    the first two keys containing ``points`` (``point_1`` does not count), each indexed [0], [1]
    (extra entries ignored);
  * every coordinate is ``round(int(v) * factor)`` with ``factor = width / size`` for x and
    ``height / size`` for y: `int` truncates floats (``12.9`` -> 12) and reads numeric strings
    (``"57"``, ``" 57 "``), a one-character-per-coordinate string works (``"1234"`` is a box),
    then Python's `round` (half to even) after the scale;
  * the reasoning is the first match of ``<think>([^<]+)</think>``: missing, empty or holding a
    ``<`` (with no later well-formed block) fails the whole answer;
  * any failure (no object, bad JSON, a missing key, a wrong length, a value `int` refuses,
    an overflow) fails the whole answer, with no partial credit.

`parse_lenient` is an explicitly named, more forgiving alternative (not the reference protocol).
Both return `Answer` or raise `AnswerError` with the reason; model output is parsed, never
evaluated.
"""

from __future__ import annotations

import json
import math
import re
from typing import Callable, NamedTuple

_JSON_OBJECT = re.compile(r"{[^}]+}")
_THINK = re.compile(r"<think>([^<]+)</think>")
_CONVERSION_ERRORS = (TypeError, ValueError, KeyError, IndexError, OverflowError)


class Answer(NamedTuple):
    """bbox (x1, y1, x2, y2) and points ((x, y), (x, y)) in original-image pixels, as answered
    (not reordered or clipped); think: the reasoning text."""

    bbox: tuple[int, int, int, int]
    points: tuple[tuple[int, int], tuple[int, int]]
    think: str


class AnswerError(ValueError):
    """The response does not hold an answer the parser accepts; the message says why."""


def scale_factors(width: int, height: int, size: int) -> tuple[float, float]:
    """(x_factor, y_factor) = (width / size, height / size), as the reference computes them."""
    if width <= 0 or height <= 0 or size <= 0:
        raise ValueError(f"image size {width}x{height} and frame size {size} must be positive")
    return width / size, height / size


def _to_pixels(value, factor: float) -> int:
    return round(int(value) * factor)


def parse_segzero(text: str, x_factor: float, y_factor: float) -> Answer:
    """Seg-Zero's evaluation parser (see the module docstring); raises `AnswerError`."""
    if not isinstance(text, str):
        raise AnswerError(f"response is {type(text).__name__}, not text")
    match = _JSON_OBJECT.search(text)
    if match is None:
        raise AnswerError("no {...} object in the response")
    try:
        data = json.loads(match.group(0))
    except (json.JSONDecodeError, RecursionError) as err:
        raise AnswerError(f"the first {{...}} span is not JSON: {err}") from None
    bbox = points = None
    try:
        bbox_key = next((key for key in data.keys() if "bbox" in key.lower()), None)
        if bbox_key and len(data[bbox_key]) == 4:
            v = data[bbox_key]
            bbox = (_to_pixels(v[0], x_factor), _to_pixels(v[1], y_factor),
                    _to_pixels(v[2], x_factor), _to_pixels(v[3], y_factor))
        points_keys = [key for key in data.keys() if "points" in key.lower()][:2]
        if len(points_keys) == 2:
            p1, p2 = data[points_keys[0]], data[points_keys[1]]
            points = ((_to_pixels(p1[0], x_factor), _to_pixels(p1[1], y_factor)),
                      (_to_pixels(p2[0], x_factor), _to_pixels(p2[1], y_factor)))
    except _CONVERSION_ERRORS as err:
        raise AnswerError(f"a coordinate cannot be read: {type(err).__name__}: {err}") from None
    if bbox is None:
        raise AnswerError("no key containing 'bbox' with 4 values")
    if points is None:
        raise AnswerError("fewer than two keys containing 'points'")
    think = _THINK.search(text)
    if think is None:
        raise AnswerError("no <think>...</think> block without '<' inside")
    return Answer(bbox, points, think.group(1))


_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK_ANY = re.compile(r"<think>(.*?)</think>", re.S)


def _lenient_pixels(value, factor: float) -> int:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"coordinate {value!r} is not finite")
    return round(number * factor)


def parse_lenient(text: str, x_factor: float, y_factor: float) -> Answer:
    """A forgiving parser (NOT the reference protocol): the object is looked for inside the last
    ``<answer>...</answer>`` when there is one; Python-style single quotes are accepted; keys
    match ``bbox`` / ``point`` by substring; coordinates are ``round(float(v) * factor)``; the
    reasoning may be missing or hold ``<`` (``think`` is then "" or its raw text)."""
    if not isinstance(text, str):
        raise AnswerError(f"response is {type(text).__name__}, not text")
    answers = _ANSWER.findall(text)
    region = answers[-1] if answers else text
    match = _JSON_OBJECT.search(region)
    if match is None:
        raise AnswerError("no {...} object in the answer")
    span = match.group(0)
    data = None
    for candidate in (span, span.replace("'", '"')):
        try:
            data = json.loads(candidate)
            break
        except (json.JSONDecodeError, RecursionError):
            continue
    if not isinstance(data, dict):
        raise AnswerError("the answer's {...} span is not a JSON object, even with ' read as \"")
    bbox_key = next((k for k in data if "bbox" in k.lower()), None)
    point_keys = [k for k in data if "point" in k.lower() and k != bbox_key][:2]
    try:
        if bbox_key is None or len(data[bbox_key]) != 4:
            raise AnswerError("no key containing 'bbox' with 4 values")
        if len(point_keys) != 2:
            raise AnswerError("fewer than two keys containing 'point'")
        v = data[bbox_key]
        bbox = (_lenient_pixels(v[0], x_factor), _lenient_pixels(v[1], y_factor),
                _lenient_pixels(v[2], x_factor), _lenient_pixels(v[3], y_factor))
        pts = []
        for key in point_keys:
            p = data[key]
            if len(p) != 2:
                raise AnswerError(f"{key!r} does not hold two values")
            pts.append((_lenient_pixels(p[0], x_factor), _lenient_pixels(p[1], y_factor)))
    except _CONVERSION_ERRORS as err:
        if isinstance(err, AnswerError):
            raise
        raise AnswerError(f"a coordinate cannot be read: {type(err).__name__}: {err}") from None
    think = _THINK_ANY.search(text)
    return Answer(bbox, (pts[0], pts[1]), think.group(1) if think else "")


Parser = Callable[[str, float, float], Answer]
PARSERS: dict[str, Parser] = {"segzero": parse_segzero, "lenient": parse_lenient}


def get_parser(name: str) -> Parser:
    if name not in PARSERS:
        raise ValueError(f"unknown answer parser {name!r}; choose one of {sorted(PARSERS)}")
    return PARSERS[name]


def parse_answer(text: str, width: int, height: int, size: int, parser: str = "segzero") -> Answer:
    """The answer of `text` on a `width` x `height` image, its coordinates on a `size` frame."""
    return get_parser(parser)(text, *scale_factors(width, height, size))
