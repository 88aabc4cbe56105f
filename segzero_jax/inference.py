"""One image + one question -> the policy's reasoning, its box and points, and SAM2's mask.

The path of Seg-Zero's `inference_scripts/infer.py`, on this project's pieces: the image resized
to the policy's frame (840 x 840), the Seg-Zero prompt, greedy decoding, the reference answer
parser (box and points rescaled to the original image), SAM2 prompted with the box and both
points, the best-scoring mask::

    pipeline = SegZeroPipeline(policy_config, policy_params, tokenizer, Segmenter(sam_cfg, sam_params))
    pred = pipeline(image_uint8_hwc, "the object used to cut paper")
    pred.think, pred.bbox, pred.points, pred.mask            # mask bool[H, W] (all False on failure)
    render_overlay(image, pred.mask, pred.bbox, pred.points).save("overlay.png")
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from PIL import Image, ImageDraw

from segzero_jax.evaluation import answer as answer_lib
from segzero_jax.evaluation.policy_inputs import policy_batch
from segzero_jax.models.qwen2_5_vl.processor import SEGZERO_IMAGE_SIZE, to_rgb


class Prediction(NamedTuple):
    """bbox (x1, y1, x2, y2) / points ((x, y), (x, y)) on the original image, None when the
    answer could not be parsed; mask bool[H, W]; error: why there is no mask (else None)."""

    response: str
    think: str
    bbox: Optional[tuple[int, int, int, int]]
    points: Optional[tuple[tuple[int, int], tuple[int, int]]]
    mask: np.ndarray
    score: Optional[float]
    error: Optional[str]


def as_rgb_array(image) -> np.ndarray:
    """uint8[H, W, 3] from a PIL image or a uint8 array (alpha composited onto white)."""
    return np.asarray(to_rgb(image), np.uint8)


class SegZeroPipeline:
    """Greedy policy answer -> parsed prompt -> SAM2 mask, for one image at a time."""

    def __init__(self, policy_config, policy_params, tokenizer, segmenter, *, image_size: int = SEGZERO_IMAGE_SIZE,
                 max_new_tokens: int = 1024, parser: str = "segzero", generator=None):
        answer_lib.get_parser(parser)
        self.params, self.tokenizer, self.segmenter = policy_params, tokenizer, segmenter
        self.image_size, self.parser = int(image_size), parser
        if generator is None:
            from segzero_jax.evaluation.generation import GreedyGenerator
            generator = GreedyGenerator(policy_config, tokenizer, max_new_tokens=max_new_tokens)
        self.generator = generator

    def __call__(self, image, question: str) -> Prediction:
        image = as_rgb_array(image)
        if not isinstance(question, str) or not question.strip():
            raise ValueError("the question is empty")
        batch = policy_batch([image], [question], self.tokenizer, image_size=self.image_size)
        (response,) = self.generator(self.params, batch)
        return self.segment_answer(image, response.text)

    def segment_answer(self, image, text: str) -> Prediction:
        """The prediction for a given answer `text` to `image` (no generation)."""
        image = as_rgb_array(image)
        h, w = image.shape[:2]
        empty = np.zeros((h, w), bool)
        try:
            ans = answer_lib.parse_answer(text, w, h, self.image_size, self.parser)
        except answer_lib.AnswerError as err:
            return Prediction(text, "", None, None, empty, None, f"the answer could not be parsed: {err}")
        (seg,) = self.segmenter([image], [ans.bbox], [ans.points])
        if seg.mask is None:
            return Prediction(text, ans.think, ans.bbox, ans.points, empty, None, seg.failure)
        return Prediction(text, ans.think, ans.bbox, ans.points, seg.mask, seg.score, None)


def render_mask(mask: np.ndarray) -> Image.Image:
    """bool[H, W] -> an 8-bit grey PNG-ready image, 255 on the mask."""
    return Image.fromarray(np.asarray(mask, bool).astype(np.uint8) * 255, mode="L")


def render_overlay(image, mask: np.ndarray, bbox=None, points=None, color=(255, 0, 0), alpha: float = 0.4,
                   box_color=(0, 255, 0), point_color=(255, 255, 0)) -> Image.Image:
    """The image with the mask tinted (`alpha` of `color`), the box outlined and the points drawn
    as small discs (each outlined in black so it stays visible on the tint)."""
    rgb = as_rgb_array(image).astype(np.float32)
    mask = np.asarray(mask, bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {rgb.shape[:2]} differ in size")
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(color, np.float32)
    out = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 250))
    if bbox is not None:
        x1, y1, x2, y2 = bbox
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=box_color, width=width)
    for x, y in points or ():
        r = 2 * width + 1
        draw.ellipse([x - r, y - r, x + r, y + r], fill=point_color, outline=(0, 0, 0))
    return out
