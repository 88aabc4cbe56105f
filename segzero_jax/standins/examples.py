"""The arrays the stand-ins train on, and the objects of a scene drawn on a plain background.

`SegExamples` (SAM2 stand-in), N examples of one split, on the stored image's pixel frame:

    images   uint8[N, H, W, 3]
    masks    bool[N, H, W]          the referred object
    bbox     float32[N, 4]          (x1, y1, x2, y2), inclusive extreme pixels of the mask
    points   float32[N, 2, 2]       two (x, y) points inside the object

`PolicyExamples` (policy warm start), N prompts as the input pipeline makes them
(`data_pipelines.input_pipeline.SegZeroPreprocess`), on the policy's image_size frame:

    input_ids       int32[N, T]         left-padded templated Seg-Zero prompt
    attention_mask  int32[N, T]
    pixel_values    float32[N, P, 1176] each prompt's image patches (one image grid for all)
    image_grid_thw  int32[N, 3]
    bbox            float32[N, 4]       ground truth
    points          float32[N, 2, 2]
    candidates      tuple of N float32[K_n, 8]: one row (x1, y1, x2, y2, px1, py1, px2, py2)
                    per object of the scene, the referred one included (may be empty)
    reasoning       tuple of N str      the short reasoning written inside <think></think>
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
from scipy import ndimage

from segzero_jax.masks import mask_to_prompt


@dataclasses.dataclass(frozen=True)
class SegExamples:
    images: np.ndarray
    masks: np.ndarray
    bbox: np.ndarray
    points: np.ndarray

    def __post_init__(self):
        n, h, w = self.masks.shape
        _check_shape("images", self.images, (n, h, w, 3))
        _check_shape("bbox", self.bbox, (n, 4))
        _check_shape("points", self.points, (n, 2, 2))
        if self.images.dtype != np.uint8:
            raise ValueError(f"SegExamples.images must be uint8, got {self.images.dtype}")

    def __len__(self) -> int:
        return int(self.masks.shape[0])


@dataclasses.dataclass(frozen=True)
class PolicyExamples:
    input_ids: np.ndarray
    attention_mask: np.ndarray
    pixel_values: np.ndarray
    image_grid_thw: np.ndarray
    bbox: np.ndarray
    points: np.ndarray
    candidates: tuple
    reasoning: tuple

    def __post_init__(self):
        n, t = self.input_ids.shape
        _check_shape("attention_mask", self.attention_mask, (n, t))
        _check_shape("image_grid_thw", self.image_grid_thw, (n, 3))
        _check_shape("bbox", self.bbox, (n, 4))
        _check_shape("points", self.points, (n, 2, 2))
        if self.pixel_values.ndim != 3 or self.pixel_values.shape[0] != n:
            raise ValueError(f"PolicyExamples.pixel_values must be [N={n}, P, patch_dim], "
                             f"got {self.pixel_values.shape}")
        if len(np.unique(self.image_grid_thw, axis=0)) > 1:
            raise ValueError("PolicyExamples.image_grid_thw: all prompts must share one image grid "
                             "(resize the images to one image_size)")
        if len(self.candidates) != n or len(self.reasoning) != n:
            raise ValueError(f"PolicyExamples: {len(self.candidates)} candidates and {len(self.reasoning)} "
                             f"reasoning texts for {n} prompts")
        for i, c in enumerate(self.candidates):
            if np.ndim(c) != 2 or np.shape(c)[1] != 8:
                raise ValueError(f"PolicyExamples.candidates[{i}] must be float[K, 8], got shape {np.shape(c)}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _check_shape(field: str, array: np.ndarray, shape: tuple) -> None:
    if tuple(np.shape(array)) != tuple(shape):
        raise ValueError(f"{field} must have shape {tuple(shape)}, got {tuple(np.shape(array))}")


def plain_background_objects(image: np.ndarray, tolerance: int = 40, min_pixels: int = 12) -> np.ndarray:
    """Objects of a scene drawn on a uniform background: float32[K, 8] rows (bbox, point 1,
    point 2) in the geometry of `segzero_jax.masks.mask_to_prompt`, in raster order of the
    objects' first pixel.

    The background is the image's most frequent colour; a pixel is foreground when a channel
    differs from it by more than `tolerance`; objects are the 8-connected foreground components
    of at least `min_pixels` pixels (objects must not touch). This recovers every object of a
    `data_pipelines.synthetic` scene, so a warm-start target can name a wrong one of them.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    flat = image.reshape(-1, 3).astype(np.int32)
    codes = (flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]
    values, counts = np.unique(codes, return_counts=True)
    top = int(values[np.argmax(counts)])
    background = np.array([(top >> 16) & 255, (top >> 8) & 255, top & 255], np.int32)
    foreground = (np.abs(image.astype(np.int32) - background).max(axis=-1) > tolerance)
    labels, count = ndimage.label(foreground, structure=np.ones((3, 3), bool))
    rows = []
    for index in range(1, count + 1):
        ys, xs = np.nonzero(labels == index)
        if len(ys) < min_pixels:
            continue
        y0, x0 = ys.min(), xs.min()
        crop = labels[y0:ys.max() + 1, x0:xs.max() + 1] == index   # the prompt of the crop, shifted back
        prompt = mask_to_prompt(crop)
        offset = np.array([x0, y0])
        rows.append(np.concatenate([prompt.bbox + np.tile(offset, 2), (prompt.points + offset).reshape(-1)])
                    .astype(np.float32))
    return np.stack(rows) if rows else np.zeros((0, 8), np.float32)


def target_row(candidates: np.ndarray, bbox: Sequence[float]) -> int:
    """Index of the candidate whose box is nearest `bbox` (mean absolute difference)."""
    if len(candidates) == 0:
        return -1
    return int(np.argmin(np.abs(candidates[:, :4] - np.asarray(bbox, np.float32)).mean(axis=1)))
