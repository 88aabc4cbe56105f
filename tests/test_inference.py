"""segzero_jax.inference: one image + question -> prediction, and the rendered mask / overlay."""

import numpy as np
import pytest

from segzero_jax.evaluation.generation import Response
from segzero_jax.inference import SegZeroPipeline, render_mask, render_overlay
from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
from segzero_jax.segment import Segmentation

ANSWER = ('<think>the square on the left</think><answer>{"bbox": [0,0,420,420], '
          '"points_1": [100,100], "points_2": [300,300]}</answer>')


class BoxSegmenter:
    def __init__(self):
        self.prompts = []

    def __call__(self, images, boxes, points):
        self.prompts.append((boxes, points))
        out = []
        for im, (x1, y1, x2, y2) in zip(images, boxes):
            mask = np.zeros(im.shape[:2], bool)
            mask[y1:y2, x1:x2] = True
            out.append(Segmentation(mask, 0.75))
        return out


def _pipeline(text, image_size=56):
    seen = []

    def generator(params, batch):
        seen.append(batch)
        return [Response(text, 20, True)]

    return SegZeroPipeline(None, None, QwenTokenizer.default(), BoxSegmenter(), image_size=image_size,
                           generator=generator), seen


def test_prediction_is_rescaled_to_the_original_image():
    pipeline, seen = _pipeline(ANSWER, image_size=840)
    image = np.zeros((60, 80, 3), np.uint8)
    pred = pipeline(image, "The square.")
    assert pred.error is None and pred.think == "the square on the left"
    # 840 frame -> 80 x 60: x * 80/840, y * 60/840
    assert pred.bbox == (0, 0, 40, 30) and pred.points == ((round(100 * 80 / 840), round(100 * 60 / 840)),
                                                           (round(300 * 80 / 840), round(300 * 60 / 840)))
    assert pred.mask.shape == (60, 80) and pred.mask.sum() == 40 * 30 and pred.score == 0.75
    assert seen[0]["image_grid_thw"].tolist() == [[1, 60, 60]]  # the policy saw 840 x 840


def test_unparsable_answer_gives_an_empty_mask_and_the_reason():
    pipeline, _ = _pipeline("I think it is the square.")
    pred = pipeline(np.zeros((30, 40, 3), np.uint8), "the square")
    assert pred.bbox is None and not pred.mask.any() and pred.mask.shape == (30, 40)
    assert "could not be parsed" in pred.error and pred.response == "I think it is the square."
    with pytest.raises(ValueError, match="empty"):
        pipeline(np.zeros((30, 40, 3), np.uint8), "  ")


def test_overlay_tints_the_mask_and_draws_box_and_points():
    image = np.full((40, 50, 3), 200, np.uint8)
    mask = np.zeros((40, 50), bool)
    mask[10:20, 10:30] = True
    out = np.asarray(render_overlay(image, mask, (5, 5, 40, 35), ((15, 15),), alpha=0.5))
    assert out.shape == image.shape
    np.testing.assert_array_equal(out[12, 20], [228, 100, 100])   # 0.5 * 200 + 0.5 * (255, 0, 0)
    np.testing.assert_array_equal(out[25, 45], [200, 200, 200])   # untouched
    np.testing.assert_array_equal(out[20, 5], [0, 255, 0])        # box outline
    np.testing.assert_array_equal(out[15, 15], [255, 255, 0])     # point disc
    grey = np.asarray(render_mask(mask))
    assert grey.dtype == np.uint8 and set(np.unique(grey)) == {0, 255} and (grey == 255).sum() == 200
    with pytest.raises(ValueError, match="differ in size"):
        render_overlay(image, mask[:5], None, None)
