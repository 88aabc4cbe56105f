"""Warm-start targets: Seg-Zero's answer text around a deliberately imprecise box and points.

The warm start teaches the policy the answer FORMAT, not the grounding, so that GRPO has
accuracy left to learn. Each target names, with probability `decoy_fraction`, another object of
the scene (its box and points: right format, wrong object); otherwise the referred object with
every box coordinate moved by up to `box_jitter` times the box's width or height and rounded to
a multiple of `quantum` pixels, and its two points moved as much. Coordinates are then clamped
to `coordinate_range` (default [10, 99]: every number has two digits, so the answer's token
layout is fixed; on the synthetic data the "tiny" policy's greedy answers all parse after 150
steps, against 83% with numbers of one to three digits, whose digits and commas it miscounts)
and the points into the box. The answer is

    <think>{reasoning}</think><answer>{"bbox":[x1,y1,x2,y2],"points_1":[x,y],"points_2":[x,y]}</answer>

(compact JSON: its keys and lists are what Seg-Zero's strict format reward and evaluation
parser read; without the spaces of the prompt's example it takes 6 tokens fewer).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TargetMix:
    """How wrong a warm-start target is (see the module docstring)."""

    decoy_fraction: float = 0.5
    box_jitter: float = 0.3
    quantum: int = 8
    coordinate_range: Optional[tuple] = (10, 99)     # for the 112-px synthetic frame; None: [0, size - 1]

    def __post_init__(self):
        if not 0.0 <= self.decoy_fraction <= 1.0:
            raise ValueError(f"TargetMix.decoy_fraction={self.decoy_fraction} must be in [0, 1]")
        if self.box_jitter < 0:
            raise ValueError(f"TargetMix.box_jitter={self.box_jitter} must be >= 0")
        if self.quantum < 1:
            raise ValueError(f"TargetMix.quantum={self.quantum} must be >= 1")
        if self.coordinate_range is not None and not (len(self.coordinate_range) == 2
                                                      and 0 <= self.coordinate_range[0] < self.coordinate_range[1]):
            raise ValueError(f"TargetMix.coordinate_range={self.coordinate_range} must be (low, high) with "
                             "0 <= low < high")


def format_answer(reasoning: str, bbox: Sequence[float], points: Sequence[Sequence[float]]) -> str:
    """Seg-Zero's answer with integer coordinates (no end-of-turn token)."""
    if "<" in reasoning:
        raise ValueError(f"reasoning {reasoning!r} holds a '<' (Seg-Zero's parser rejects it)")
    ints = lambda v: [int(round(float(x))) for x in v]
    answer = {"bbox": ints(bbox), "points_1": ints(points[0]), "points_2": ints(points[1])}
    return f"<think>{reasoning}</think><answer>{json.dumps(answer, separators=(',', ':'))}</answer>"


def short_reasoning(question: str, max_words: int = 4) -> str:
    """The first `max_words` words of a question, lower-cased, without '<' (a fallback
    reasoning text when the data names no target)."""
    words = question.replace("<", " ").lower().strip(" .").split()
    return " ".join(words[:max_words]) or "the object"


def _jittered(rng: np.random.Generator, bbox: np.ndarray, points: np.ndarray, mix: TargetMix
              ) -> tuple[np.ndarray, np.ndarray]:
    w, h = bbox[2] - bbox[0] + 1, bbox[3] - bbox[1] + 1
    scale = np.array([w, h, w, h], np.float64) * mix.box_jitter
    box = bbox + rng.uniform(-1.0, 1.0, 4) * scale
    box = np.round(box / mix.quantum) * mix.quantum
    return box, points + rng.uniform(-1.0, 1.0, (2, 2)) * scale[None, :2]


def _clamped(box: np.ndarray, points: np.ndarray, low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer box within [low, high] with x1 < x2 and y1 < y2, points clamped into it."""
    box = np.clip(np.round(box), low, high)
    x1, x2 = sorted(box[[0, 2]])
    y1, y2 = sorted(box[[1, 3]])
    if x2 == x1:
        x1, x2 = (x1, x1 + 1) if x1 < high else (x1 - 1, x1)
    if y2 == y1:
        y1, y2 = (y1, y1 + 1) if y1 < high else (y1 - 1, y1)
    return np.array([x1, y1, x2, y2]), np.clip(np.round(points), [x1, y1], [x2, y2])


def warm_start_target(rng: np.random.Generator, bbox: np.ndarray, points: np.ndarray,
                      candidates: np.ndarray, mix: TargetMix, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(bbox float[4], points float[2, 2]) of one target on a `size`-pixel frame: a decoy row of
    `candidates` float[K, 8] (not the one nearest the ground truth) or the jittered truth,
    clamped to `mix.coordinate_range`."""
    bbox = np.asarray(bbox, np.float64)
    points = np.asarray(points, np.float64)
    candidates = np.asarray(candidates, np.float64).reshape(-1, 8)
    if len(candidates):
        nearest = np.argmin(np.abs(candidates[:, :4] - bbox).mean(axis=1))
        decoys = np.delete(candidates, nearest, axis=0)
    else:
        decoys = candidates
    if len(decoys) and rng.uniform() < mix.decoy_fraction:
        row = decoys[rng.integers(len(decoys))]
        box, pts = row[:4], row[4:].reshape(2, 2)
    else:
        box, pts = _jittered(rng, bbox, points, mix)
    low, high = (0, size - 1) if mix.coordinate_range is None else mix.coordinate_range
    return _clamped(box, pts, low, min(high, size - 1))
