"""Image predictor with the reference `SAM2ImagePredictor` semantics, and its jitted batch path.

Pre-processing (`preprocess_image`): uint8 [H, W, 3] -> /255 -> antialiased bilinear resize to
S x S (torchvision `Resize` on tensors) -> ImageNet mean/std.
Prompts: pixel coordinates of the original image are mapped to the S x S input frame with
c' = c / (W, H) * S; a box becomes two corner points labelled 2 and 3, placed before the points;
the prompt encoder then appends a padding point (the reference always pads, as it passes the
box as points) and shifts every point by +0.5 (pixel centres).
Post-processing: low-res logits float[M, S/4, S/4] -> bilinear (align_corners=False) to the
original H x W -> `> mask_threshold`; the returned low-res logits are clamped to [-32, 32].

`predict_batch` runs B images x K prompts with fixed shapes under `jax.jit`; `SamPredictor` is a
thin stateful wrapper (set_image / predict) over the same jitted pieces.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.sam2.config import Sam2Config
from segzero_jax.models.sam2.mask_decoder import select_masks
from segzero_jax.models.sam2.model import Sam2
from segzero_jax.models.sam2.resize import bilinear_matrix_traced, resize_hw, resize_hwc

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess_image(image: jax.Array, image_size: int) -> jax.Array:
    """uint8 (or float in [0, 1]) [..., H, W, 3] -> float32[..., S, S, 3] normalised model input."""
    x = jnp.asarray(image)
    x = x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)
    x = resize_hwc(x, (image_size, image_size), "bilinear_aa")
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def to_input_frame(coords: jax.Array, orig_hw: tuple[int, int], image_size: int) -> jax.Array:
    """(x, y) pixels of an H x W image -> pixels of the S x S model input."""
    h, w = orig_hw
    scale = jnp.asarray([w, h], jnp.float32)
    return coords.astype(jnp.float32) / scale * image_size


def concat_prompts(boxes: Optional[jax.Array], points: Optional[jax.Array],
                   labels: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """boxes float[..., 4] (x1 y1 x2 y2) and points float[..., P, 2] / labels int[..., P]
    -> the reference's point list: box corners (labels 2, 3) first, then the points."""
    parts, part_labels = [], []
    if boxes is not None and boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., 4] (x1, y1, x2, y2), got {boxes.shape}")
    if points is not None:
        if labels is None:
            raise ValueError("point labels must be given with point coordinates")
        if points.shape[-1] != 2 or points.shape[:-1] != labels.shape:
            raise ValueError(f"points {points.shape} and labels {labels.shape} must be [..., P, 2] "
                             "and [..., P]")
        if boxes is not None and boxes.shape[:-1] != points.shape[:-2]:
            raise ValueError(f"boxes {boxes.shape} and points {points.shape} must share the "
                             "leading (prompt) dims")
    if boxes is not None:
        corners = boxes.reshape(*boxes.shape[:-1], 2, 2)
        parts.append(corners)
        part_labels.append(jnp.broadcast_to(jnp.asarray([2, 3], jnp.int32), corners.shape[:-1]))
    if points is not None:
        parts.append(points)
        part_labels.append(labels.astype(jnp.int32))
    return jnp.concatenate(parts, axis=-2), jnp.concatenate(part_labels, axis=-1)


def _upsample(low: jax.Array, orig_hw: tuple[int, int], image_hw: Optional[jax.Array]) -> jax.Array:
    """float[N, ..., h, w] logits -> float[N, ..., H, W]: to `orig_hw`, or with per-prompt
    `image_hw` int[N, 2] to each image's own size inside an `orig_hw` canvas (zero outside)."""
    if image_hw is None:
        return resize_hw(low, orig_hw, "bilinear")
    h_in, w_in = low.shape[-2:]
    ry = jax.vmap(lambda n: bilinear_matrix_traced(h_in, n, orig_hw[0]))(image_hw[:, 0])
    rx = jax.vmap(lambda n: bilinear_matrix_traced(w_in, n, orig_hw[1]))(image_hw[:, 1])
    hi = jax.lax.Precision.HIGHEST
    y = jnp.einsum("NyY,N...YX->N...yX", ry, low.astype(jnp.float32), precision=hi)
    return jnp.einsum("NxX,N...yX->N...yx", rx, y, precision=hi)


def _decode_postprocess(config: Sam2Config, params: dict, image_embed, high_res, coords, labels,
                        orig_hw, multimask_output: bool, best_only: bool,
                        image_hw: Optional[jax.Array] = None) -> dict:
    """Per-prompt features (batch N) + input-frame prompts -> reference predictor outputs."""
    model = Sam2(config)
    all_masks, all_iou, obj = model.apply({"params": params}, image_embed, high_res, coords, labels,
                                          None, True, method=Sam2.decode)
    low, scores = select_masks(config, all_masks, all_iou, multimask_output)
    best = jnp.argmax(scores, axis=-1)
    best_low = jnp.take_along_axis(low, best[:, None, None, None], axis=1)[:, 0]
    out = {"scores": scores, "low_res_logits": jnp.clip(low, -32.0, 32.0),
           "best_index": best, "best_score": jnp.take_along_axis(scores, best[:, None], 1)[:, 0],
           "object_score_logits": obj[:, 0]}
    thr = config.mask_threshold
    out["best_mask"] = _upsample(best_low, orig_hw, image_hw) > thr
    if not best_only:
        out["masks"] = _upsample(low, orig_hw, image_hw) > thr
    return out


@functools.partial(jax.jit, static_argnames=("config", "orig_hw", "multimask_output", "best_only"))
def predict_batch(params: dict, images: jax.Array, boxes: Optional[jax.Array], points: Optional[jax.Array],
                  labels: Optional[jax.Array], orig_hw: tuple[int, int], *, config: Sam2Config,
                  multimask_output: bool = True, best_only: bool = False,
                  image_hw: Optional[jax.Array] = None) -> dict:
    """B images x K prompts in one jitted call.

    images float[B, S, S, 3] (from `preprocess_image`); boxes float[B, K, 4] or None;
    points float[B, K, P, 2] or None, labels int[B, K, P] (-1 = ignored point); prompt
    coordinates are pixels of the original H x W = `orig_hw` image. Returns (M = 3 with
    multimask_output, else 1): masks bool[B, K, M, H, W] (unless best_only),
    scores float[B, K, M], low_res_logits float[B, K, M, S/4, S/4], best_index int[B, K],
    best_score float[B, K], best_mask bool[B, K, H, W] (the top-scoring of the M masks, as
    Seg-Zero picks it), object_score_logits float[B, K].

    Images of different sizes in one batch: pass `image_hw` int[B, 2] (each image's H, W; its
    prompts are in its own pixels) and `orig_hw` as the static output canvas (>= every image);
    image b's masks then fill [:H_b, :W_b] of the canvas and are False elsewhere.
    """
    if boxes is None and points is None:
        raise ValueError("predict_batch needs boxes, points or both")
    enc = Sam2(config).apply({"params": params}, images, method=Sam2.encode_image)
    coords, labs = concat_prompts(boxes, points, labels)
    b, k = coords.shape[:2]
    per_prompt = lambda t: jnp.repeat(t, k, axis=0)
    if image_hw is None:
        coords = to_input_frame(coords, orig_hw, config.image_size)
    else:
        if image_hw.shape != (b, 2):
            raise ValueError(f"image_hw must be int[{b}, 2] (H, W per image), got {image_hw.shape}")
        scale = image_hw[:, ::-1].astype(jnp.float32)[:, None, None, :]
        coords = coords.astype(jnp.float32) / scale * config.image_size
        image_hw = per_prompt(image_hw)
    coords, labs = coords.reshape(b * k, -1, 2), labs.reshape(b * k, -1)
    high = enc.get("high_res_feats")
    high = tuple(per_prompt(t) for t in high) if high is not None else None
    out = _decode_postprocess(config, params, per_prompt(enc["image_embed"]), high, coords, labs,
                              tuple(orig_hw), multimask_output, best_only, image_hw)
    return jax.tree.map(lambda t: t.reshape(b, k, *t.shape[1:]), out)


def low_res_masks(params: dict, images: jax.Array, boxes: jax.Array, points: jax.Array, labels: jax.Array,
                  *, config: Sam2Config, multimask_output: bool = True) -> tuple[jax.Array, jax.Array]:
    """Encoder + decoder and the multimask choice, no resizing back: the work a benchmark or an
    ahead-of-time compile measures. images float[B, S, S, 3]; one prompt per image in input-frame
    pixels: boxes float[B, 4], points float[B, P, 2], labels int[B, P]. Returns low-res logits
    float32[B, M, S/4, S/4] and scores float32[B, M]."""
    model = Sam2(config)
    enc = model.apply({"params": params}, images, method=Sam2.encode_image)
    coords, labs = concat_prompts(boxes[:, None], points[:, None], labels[:, None])
    masks, iou, _ = model.apply({"params": params}, enc["image_embed"], enc.get("high_res_feats"),
                                coords[:, 0], labs[:, 0], method=Sam2.decode)
    return select_masks(config, masks, iou, multimask_output)


_preprocess = jax.jit(preprocess_image, static_argnames=("image_size",))


@functools.partial(jax.jit, static_argnames=("config",))
def _encode(params: dict, x: jax.Array, *, config: Sam2Config) -> dict:
    enc = Sam2(config).apply({"params": params}, x, method=Sam2.encode_image)
    return {"image_embed": enc["image_embed"], "high_res_feats": enc.get("high_res_feats")}


@functools.partial(jax.jit, static_argnames=("config", "orig_hw", "coord_hw", "pad"))
def _predict(params: dict, features: dict, coords: jax.Array, labels: jax.Array,
             mask_input: Optional[jax.Array], *, config: Sam2Config, orig_hw: tuple[int, int],
             coord_hw: tuple[int, int], pad: bool) -> dict:
    """K prompts on one image -> both selections ("multi": M = 3, "single": M = 1), each with
    upsampled float logits, so one compiled function serves either `multimask_output`.
    Coordinates are in a `coord_hw` frame (the image, or (1, 1) for normalised ones)."""
    n = coords.shape[0]
    rep = lambda t: jnp.broadcast_to(t, (n, *t.shape[1:]))
    high = features["high_res_feats"]
    high = tuple(rep(t) for t in high) if high is not None else None
    coords = to_input_frame(coords, coord_hw, config.image_size)
    all_masks, all_iou, _ = Sam2(config).apply({"params": params}, rep(features["image_embed"]), high,
                                               coords, labels, mask_input, pad, method=Sam2.decode)
    out = {}
    for name, multi in (("multi", True), ("single", False)):
        low, scores = select_masks(config, all_masks, all_iou, multi)
        out[name] = {"scores": scores, "low_res_logits": jnp.clip(low, -32.0, 32.0),
                     "mask_logits": resize_hw(low, orig_hw, "bilinear")}
    return out


class SamPredictor:
    """The reference image predictor's interface over the jitted model.

        predictor = SamPredictor(config, params)
        predictor.set_image(image_uint8_hwc)
        masks, scores, low_res = predictor.predict(point_coords=pts, point_labels=lbl, box=box)

    Outputs follow the reference: masks bool[M, H, W], scores float[M], low_res_logits
    float[M, S/4, S/4] for one prompt (a leading K axis for K boxes / K point sets).
    """

    def __init__(self, config: Sam2Config, params: dict):
        self.config = config
        self.params = params
        self.reset_predictor()

    def reset_predictor(self) -> None:
        self._features = None
        self._orig_hw = None

    def set_image(self, image: np.ndarray) -> None:
        """image: uint8 [H, W, 3] RGB (a float array is taken as already scaled to [0, 1])."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"set_image expects an RGB image [H, W, 3], got shape {image.shape}")
        self.reset_predictor()
        self._orig_hw = (int(image.shape[0]), int(image.shape[1]))
        x = _preprocess(jnp.asarray(image), image_size=self.config.image_size)
        self._features = _encode(self.params, x[None], config=self.config)

    @property
    def is_image_set(self) -> bool:
        return self._features is not None

    def get_image_embedding(self) -> np.ndarray:
        """float32[1, D, S/16, S/16] (the reference's channels-first layout)."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to get an embedding.")
        return np.asarray(self._features["image_embed"], np.float32).transpose(0, 3, 1, 2)

    def predict(self, point_coords: Optional[np.ndarray] = None, point_labels: Optional[np.ndarray] = None,
                box: Optional[np.ndarray] = None, mask_input: Optional[np.ndarray] = None,
                multimask_output: bool = True, return_logits: bool = False,
                normalize_coords: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same arguments, in the same order, as the reference's `predict`: point_coords [N, 2]
        (or [K, N, 2]) and point_labels [N] (1 foreground, 0 background) in pixels of the
        original image (or in [0, 1] with normalize_coords=False), box [4] (or [K, 4]) as
        x1 y1 x2 y2, mask_input float[1, S/4, S/4] low-res logits of an earlier prediction (or
        [K, 1, S/4, S/4]). With return_logits the masks are the upsampled float logits."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        boxes = points = labels = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            points = np.asarray(point_coords, np.float32)
            labels = np.asarray(point_labels, np.int32)
            if points.shape[-1] != 2 or points.shape[:-1] != labels.shape:
                raise ValueError(f"point_coords {points.shape} and point_labels {labels.shape} must be "
                                 "[N, 2] and [N] (or [K, N, 2] and [K, N])")
            if points.ndim == 2:
                points, labels = points[None], labels[None]
        if box is not None:
            boxes = np.asarray(box, np.float32)
            if boxes.shape[-1] != 4:
                raise ValueError(f"box must be [4] or [K, 4] (x1, y1, x2, y2), got {boxes.shape}")
            boxes = boxes.reshape(-1, 4)
        pad = True
        if boxes is None and points is None:
            coords, labs, pad = np.zeros((1, 0, 2), np.float32), np.zeros((1, 0), np.int32), False
        else:
            if boxes is not None and points is not None and boxes.shape[0] != points.shape[0]:
                raise ValueError(f"{boxes.shape[0]} boxes and {points.shape[0]} point sets: counts must match")
            coords, labs = concat_prompts(None if boxes is None else jnp.asarray(boxes),
                                          None if points is None else jnp.asarray(points),
                                          None if labels is None else jnp.asarray(labels))
        masks_in = None
        if mask_input is not None:
            masks_in = np.asarray(mask_input, np.float32)
            n = self.config.low_res_size
            if masks_in.shape[-3:] != (1, n, n) or masks_in.ndim not in (3, 4):
                raise ValueError(f"mask_input must be [1, {n}, {n}] or [K, 1, {n}, {n}], got {masks_in.shape}")
            masks_in = masks_in.reshape(-1, n, n)
            if masks_in.shape[0] not in (1, coords.shape[0]):
                raise ValueError(f"{masks_in.shape[0]} mask inputs for {coords.shape[0]} prompts")
            masks_in = jnp.asarray(masks_in)
        out = _predict(self.params, self._features, jnp.asarray(coords), jnp.asarray(labs), masks_in,
                       config=self.config, orig_hw=self._orig_hw,
                       coord_hw=self._orig_hw if normalize_coords else (1, 1), pad=pad)
        out = out["multi" if multimask_output else "single"]
        logits = np.asarray(out["mask_logits"], np.float32)
        masks = logits if return_logits else logits > self.config.mask_threshold
        scores = np.asarray(out["scores"], np.float32)
        low = np.asarray(out["low_res_logits"], np.float32)
        if masks.shape[0] == 1:
            masks, scores, low = masks[0], scores[0], low[0]
        return masks, scores, low
