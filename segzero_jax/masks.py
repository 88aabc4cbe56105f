"""Binary mask -> Seg-Zero prompt geometry: a bbox and two points inside the object.

The bbox spans the extreme foreground pixels, ``[x_min, y_min, x_max, y_max]`` (inclusive pixel
indices, as Seg-Zero's data preparation writes it). The two points are the centres of the two
largest inscribed circles: the Euclidean distance transform gives, for every foreground pixel,
the radius of the largest circle centred there that stays inside the mask.

* point 1: the pixel with the largest distance (first in raster order on ties);
* point 2: the pixel with the largest distance among those whose circle does not overlap the
  first one (``|q - p1| >= r1 + r(q)``); when the object is too compact for two disjoint circles
  (a disc, a square), the pixel maximising ``min(r(q), |q - p1|)``: the largest radius rho such
  that a circle of radius rho centred at least rho away from point 1 fits inside the mask.

Points are ``(x, y)`` pixel coordinates, integers, always on the mask.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage


class MaskPrompt(NamedTuple):
    """bbox int64[4] as (x1, y1, x2, y2); points int64[2, 2] as ((x, y), (x, y))."""

    bbox: np.ndarray
    points: np.ndarray


class EmptyMaskError(ValueError):
    """The mask has no foreground pixel, so no bbox or point exists."""


def _as_binary(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    mask = mask.astype(bool)
    if not mask.any():
        raise EmptyMaskError(f"mask of shape {mask.shape} is empty")
    return mask


def mask_to_bbox(mask: np.ndarray) -> np.ndarray:
    """Tight box around the foreground: int64[4] ``(x_min, y_min, x_max, y_max)``, inclusive."""
    mask = _as_binary(mask)
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return np.array([xs[0], ys[0], xs[-1], ys[-1]], dtype=np.int64)


def mask_to_points(mask: np.ndarray) -> np.ndarray:
    """Centres of the two largest inscribed circles: int64[2, 2], rows ``(x, y)``."""
    mask = _as_binary(mask)
    # Pad so that the image border counts as background (an object touching the edge ends there).
    radius = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    flat = int(np.argmax(radius))
    y1, x1 = np.unravel_index(flat, radius.shape)
    r1 = radius[y1, x1]
    ys, xs = np.nonzero(mask)
    r = radius[ys, xs]
    gap = np.hypot(ys - y1, xs - x1)
    disjoint = gap >= r1 + r
    if disjoint.any():
        score = np.where(disjoint, r, -1.0)
    else:
        score = np.minimum(r, gap)
    k = int(np.argmax(score))
    return np.array([[x1, y1], [xs[k], ys[k]]], dtype=np.int64)


def mask_to_prompt(mask: np.ndarray) -> MaskPrompt:
    """bbox from the extreme pixels and the two inscribed-circle centres of a binary mask."""
    return MaskPrompt(bbox=mask_to_bbox(mask), points=mask_to_points(mask))
