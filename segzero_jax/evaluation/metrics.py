"""Per-sample intersection / union under an ignore-region protocol, and gIoU / cIoU.

For a predicted mask P, a target mask T and an ignore mask G (all bool[H, W]):

  * ``segzero`` (default; Seg-Zero's ReasonSeg export casts LISA's label map, 1 = target,
    255 = ignore, to bool): the ground truth is T ∪ G;  I = |P ∩ (T ∪ G)|, U = |P ∪ T ∪ G|;
    IoU = I / U, and 0 when U = 0 (its `calculate_iou.py`).
  * ``lisa`` (LISA's `intersectionAndUnionGPU(..., ignore_index=255)`): pixels of G count in
    neither; I = |P ∩ T \\ G|, U = |(P ∪ T) \\ G|; IoU = I / U, and 1 when U = 0 (LISA's
    "no object" convention; LISA also adds 1e-5 to U, a difference below 1e-5 / U, left out).

A sample whose answer cannot be parsed, or whose SAM2 call fails, scores I = 0 and U = the
ground-truth area under the same protocol (|T ∪ G|, resp. |T \\ G|): never skipped (Seg-Zero
skips a sample whose union is 0; here it counts, with the protocol's IoU for U = 0).

    gIoU = mean over samples of IoU,   cIoU = Σ I / Σ U  (0 when Σ U = 0).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np


def _as_mask(mask, shape=None, name="mask") -> np.ndarray:
    mask = np.asarray(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f"{name} must be 2-D [H, W], got shape {mask.shape}")
    if shape is not None and mask.shape != tuple(shape):
        raise ValueError(f"{name} has shape {mask.shape}, expected {tuple(shape)}")
    return mask


@dataclasses.dataclass(frozen=True)
class IgnoreProtocol:
    """How ignore pixels enter I and U, and the IoU of an empty union."""

    name: str
    ground_truth: Callable[[np.ndarray, np.ndarray], np.ndarray]   # (T, G) -> pixels of the truth
    counted: Callable[[np.ndarray, np.ndarray], np.ndarray]        # (T, G) -> pixels that count
    empty_union_iou: float

    def _masks(self, target, ignore):
        target = _as_mask(target, name="target mask")
        ignore = np.zeros_like(target) if ignore is None else _as_mask(ignore, target.shape, "ignore mask")
        return target, ignore

    def intersection_union(self, pred, target, ignore: Optional[np.ndarray] = None) -> tuple[int, int]:
        target, ignore = self._masks(target, ignore)
        pred = _as_mask(pred, target.shape, "predicted mask")
        truth, counted = self.ground_truth(target, ignore), self.counted(target, ignore)
        inter = np.logical_and(pred, truth) & counted
        union = np.logical_or(pred, truth) & counted
        return int(inter.sum()), int(union.sum())

    def failure(self, target, ignore: Optional[np.ndarray] = None) -> tuple[int, int]:
        """(I, U) of a sample with no usable prediction: (0, ground-truth area)."""
        target, ignore = self._masks(target, ignore)
        return 0, int((self.ground_truth(target, ignore) & self.counted(target, ignore)).sum())

    def iou(self, intersection: int, union: int) -> float:
        return float(intersection) / float(union) if union > 0 else self.empty_union_iou


PROTOCOLS: dict[str, IgnoreProtocol] = {
    "segzero": IgnoreProtocol("segzero", ground_truth=lambda t, g: t | g,
                              counted=lambda t, g: np.ones_like(t), empty_union_iou=0.0),
    "lisa": IgnoreProtocol("lisa", ground_truth=lambda t, g: t, counted=lambda t, g: ~g,
                           empty_union_iou=1.0),
}


def get_protocol(name: str) -> IgnoreProtocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown ignore-region protocol {name!r}; choose one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def summarize(intersections: Iterable[int], unions: Iterable[int], ious: Iterable[float]) -> dict:
    """{"giou", "ciou", "num_samples", "intersection", "union"} over the samples."""
    inter = np.asarray(list(intersections), np.int64)
    union = np.asarray(list(unions), np.int64)
    iou = np.asarray(list(ious), np.float64)
    if not inter.shape == union.shape == iou.shape:
        raise ValueError(f"{inter.size} intersections, {union.size} unions and {iou.size} IoUs")
    total_union = int(union.sum())
    return {
        "giou": float(iou.mean()) if iou.size else 0.0,
        "ciou": float(inter.sum()) / total_union if total_union > 0 else 0.0,
        "num_samples": int(iou.size),
        "intersection": int(inter.sum()),
        "union": total_union,
    }
