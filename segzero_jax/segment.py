"""Box + two points -> a SAM2 mask, as Seg-Zero prompts SAM2 (batched, jitted).

Seg-Zero calls `SAM2ImagePredictor.predict(point_coords=points, point_labels=[1, 1], box=bbox)`
with multimask output and keeps the best-scoring of the three masks. `segment_canvas` does the
same for B images of any sizes in one jitted call: each image sits in the top-left corner of a
shared canvas uint8[B, Hc, Wc, 3]; its antialiased resize to the model input (the reference's
``Resize((S, S))``) is a pair of per-image matrices ``ry[b]`` float[S, Hc], ``rx[b]`` float[S, Wc]
whose columns past the image are zero, so the padding never enters; the masks come back on
the canvas through `predict_batch`'s ``image_hw`` path (False outside each image).

`Segmenter` is the host side: it groups prompts into fixed-size batches (the last one padded),
picks the canvas (each batch's largest side rounded up to `canvas_multiple`, or a fixed one)
so that one compile serves a whole split, and crops each mask to its image.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.sam2.config import Sam2Config
from segzero_jax.models.sam2.predictor import IMAGENET_MEAN, IMAGENET_STD, predict_batch
from segzero_jax.models.sam2.resize import resize_matrix

POINT_LABELS = (1, 1)  # both points foreground, as Seg-Zero passes them
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@functools.partial(jax.jit, static_argnames=("config",))
def segment_canvas(params: dict, canvas: jax.Array, image_hw: jax.Array, ry: jax.Array, rx: jax.Array,
                   boxes: jax.Array, points: jax.Array, *, config: Sam2Config) -> dict:
    """canvas uint8[B, Hc, Wc, 3]; image_hw int32[B, 2] (H, W of each image inside it);
    ry float32[B, S, Hc], rx float32[B, S, Wc] (`resize_rows`); boxes float32[B, 4] (x1, y1, x2,
    y2) and points float32[B, 2, 2] ((x, y), (x, y)) in each image's pixels.
    Returns mask bool[B, Hc, Wc] (the best-scoring multimask output) and score float32[B]."""
    hi = jax.lax.Precision.HIGHEST
    x = canvas.astype(jnp.float32) / 255.0
    x = jnp.einsum("bsY,bYXc->bsXc", ry, x, precision=hi)
    x = jnp.einsum("btX,bsXc->bstc", rx, x, precision=hi)
    x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
    labels = jnp.broadcast_to(jnp.asarray(POINT_LABELS, jnp.int32), points.shape[:1] + (1, 2))
    out = predict_batch(params, x, boxes[:, None], points[:, None], labels, tuple(canvas.shape[1:3]),
                        config=config, multimask_output=True, best_only=True, image_hw=image_hw)
    return {"mask": out["best_mask"][:, 0], "score": out["best_score"][:, 0]}


def resize_rows(n: int, size: int, canvas: int) -> np.ndarray:
    """float32[size, canvas]: the antialiased bilinear resize of n pixels to `size`, zero past n."""
    r = np.zeros((size, canvas), np.float32)
    r[:, :n] = resize_matrix(n, size, "bilinear_aa")
    return r


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """mask bool[H, W] on the image (None when the prompt could not be run); score: SAM2's
    predicted IoU of the chosen mask; failure: why the prompt was not run."""

    mask: Optional[np.ndarray]
    score: float
    failure: Optional[str] = None


def prompt_failure(bbox: Sequence[float], points: Sequence[Sequence[float]]) -> Optional[str]:
    """Why a prompt cannot be given to SAM2 (coordinates beyond float32), else None. The reference
    turns such values into inf and gets no usable mask: the sample scores as a failure."""
    values = [*bbox, *points[0], *points[1]]
    try:
        if all(math.isfinite(float(v)) and abs(float(v)) <= _FLOAT32_MAX for v in values):
            return None
    except OverflowError:
        pass
    return f"prompt coordinates beyond float32 range: bbox {list(bbox)}, points {[list(p) for p in points]}"


class Segmenter:
    """Runs box + two-point prompts through SAM2 in fixed-size jitted batches.

        segmenter = Segmenter(config, params, batch_size=8)
        results = segmenter(images, boxes, points)      # list of Segmentation, one per prompt

    images: uint8[H_i, W_i, 3] RGB arrays (any sizes); boxes (x1, y1, x2, y2) and points
    ((x, y), (x, y)) in each image's pixels. With a `mesh`, each batch is split over its data
    axes (`batch_size` should be a multiple of their size) and the params are used as placed.
    """

    def __init__(self, config: Sam2Config, params: dict, *, batch_size: int = 8, canvas_multiple: int = 64,
                 canvas_hw: Optional[tuple[int, int]] = None, mesh=None):
        if batch_size <= 0 or canvas_multiple <= 0:
            raise ValueError(f"batch_size ({batch_size}) and canvas_multiple ({canvas_multiple}) must be positive")
        self.config, self.params = config, params
        self.batch_size, self.canvas_multiple = int(batch_size), int(canvas_multiple)
        self.canvas_hw = None if canvas_hw is None else (int(canvas_hw[0]), int(canvas_hw[1]))
        self.mesh = mesh

    def _canvas(self, images: Sequence[np.ndarray]) -> tuple[int, int]:
        h = max(im.shape[0] for im in images)
        w = max(im.shape[1] for im in images)
        if self.canvas_hw is not None:
            if h > self.canvas_hw[0] or w > self.canvas_hw[1]:
                raise ValueError(f"an image of {h}x{w} does not fit the fixed canvas {self.canvas_hw}")
            return self.canvas_hw
        m = self.canvas_multiple
        return -(-h // m) * m, -(-w // m) * m

    def _place(self, tree):
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, tree)
        from segzero_jax.parallel.sharding import named_sharding
        return jax.tree.map(lambda a: jax.device_put(a, named_sharding(
            ("act_batch",) + (None,) * (a.ndim - 1), a.shape, self.mesh)), tree)

    def _run(self, images, boxes, points) -> tuple[np.ndarray, np.ndarray]:
        n = len(images)
        pad = self.batch_size - n
        images, boxes, points = list(images) + [images[0]] * pad, list(boxes) + [boxes[0]] * pad, \
            list(points) + [points[0]] * pad
        hc, wc = self._canvas(images)
        s = self.config.image_size
        canvas = np.zeros((self.batch_size, hc, wc, 3), np.uint8)
        for b, im in enumerate(images):
            canvas[b, :im.shape[0], :im.shape[1]] = im
        inputs = {
            "canvas": canvas,
            "image_hw": np.asarray([im.shape[:2] for im in images], np.int32),
            "ry": np.stack([resize_rows(im.shape[0], s, hc) for im in images]),
            "rx": np.stack([resize_rows(im.shape[1], s, wc) for im in images]),
            "boxes": np.asarray(boxes, np.float32).reshape(self.batch_size, 4),
            "points": np.asarray(points, np.float32).reshape(self.batch_size, 2, 2),
        }
        out = segment_canvas(self.params, config=self.config, **self._place(inputs))
        return np.asarray(out["mask"])[:n], np.asarray(out["score"], np.float32)[:n]

    def __call__(self, images: Sequence[np.ndarray], boxes: Sequence, points: Sequence) -> list[Segmentation]:
        if not len(images) == len(boxes) == len(points):
            raise ValueError(f"{len(images)} images, {len(boxes)} boxes and {len(points)} point pairs")
        results: list[Optional[Segmentation]] = [None] * len(images)
        runnable = []
        for i, (im, box, pts) in enumerate(zip(images, boxes, points)):
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[-1] != 3 or im.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8 [H, W, 3] RGB, got {im.dtype} {im.shape}")
            failure = prompt_failure(box, pts)
            if failure is None:
                runnable.append((i, im, box, pts))
            else:
                results[i] = Segmentation(None, float("nan"), failure)
        for start in range(0, len(runnable), self.batch_size):
            chunk = runnable[start:start + self.batch_size]
            masks, scores = self._run([c[1] for c in chunk], [c[2] for c in chunk], [c[3] for c in chunk])
            for (i, im, _, _), mask, score in zip(chunk, masks, scores):
                results[i] = Segmentation(mask[:im.shape[0], :im.shape[1]], float(score))
        return results  # type: ignore[return-value]
