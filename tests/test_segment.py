"""segzero_jax.segment against Meta's SAM2ImagePredictor prompted as Seg-Zero prompts it:
`predict(point_coords=points, point_labels=[1, 1], box=bbox)`, masks sorted by score, the first
kept. Images of different sizes share one jitted batch on a padded canvas."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sam2")

from segzero_jax.models.sam2 import get_preset, load_checkpoint  # noqa: E402
from segzero_jax.segment import Segmenter, prompt_failure, resize_rows  # noqa: E402
from tests.models.sam2.reference import (assert_masks_agree, build_reference, reference_predictor,  # noqa: E402
                                         save_checkpoint)

IMAGES = [(90, 120), (70, 50), (130, 100)]
BOXES = [(10, 12, 80, 60), (5, 8, 40, 60), (20, 30, 90, 120)]
POINTS = [((30, 30), (50, 40)), ((10, 20), (30, 50)), ((50, 60), (60, 100))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(2)
    cfg = get_preset("test_tiny")
    ref = build_reference(cfg, seed=1)
    cfg, params = load_checkpoint(save_checkpoint(ref, str(tmp_path_factory.mktemp("sam2"))), cfg)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in IMAGES]
    return cfg, params, ref, images


@pytest.mark.parity
@pytest.mark.slow
def test_mixed_sizes_match_the_reference_choice(models):
    cfg, params, ref, images = models
    seg = Segmenter(cfg, params, batch_size=4)  # one padded batch on a 192 x 128 canvas
    got = seg(images, BOXES, POINTS)
    rp = reference_predictor(ref, cfg)
    for image, box, pts, ours in zip(images, BOXES, POINTS, got):
        rp.set_image(image)
        masks, scores, _ = rp.predict(point_coords=[list(p) for p in pts], point_labels=[1, 1], box=list(box))
        best = np.argsort(scores)[::-1][0]
        assert ours.failure is None and ours.mask.shape == image.shape[:2]
        assert_masks_agree(ours.mask, masks[best], f"mask of {image.shape}")
        assert abs(ours.score - float(scores[best])) < 1e-3


@pytest.mark.slow
def test_unrunnable_prompts_are_failures_and_batches_chunk(models):
    cfg, params, _, images = models
    seg = Segmenter(cfg, params, batch_size=4, canvas_hw=(192, 128))  # the compile above
    huge = (0, 0, 10 ** 39, 5)
    got = seg(images[:2], [BOXES[0], huge], POINTS[:2])
    assert got[0].mask is not None and got[1].mask is None and "float32" in got[1].failure
    assert prompt_failure((0, 0, 10 ** 400, 1), ((0, 0), (1, 1))) is not None
    assert prompt_failure((0, 0, -5, 1e30), ((0, 0), (1, 1))) is None
    with pytest.raises(ValueError, match="uint8"):
        seg([images[0].astype(np.float32)], BOXES[:1], POINTS[:1])
    with pytest.raises(ValueError, match="fixed canvas"):
        Segmenter(cfg, params, canvas_hw=(64, 64))(images[:1], BOXES[:1], POINTS[:1])


def test_resize_rows_pad_with_zero_columns():
    r = resize_rows(5, 3, 8)
    assert r.shape == (3, 8) and not r[:, 5:].any()
    np.testing.assert_allclose(r.sum(axis=1), 1.0, rtol=1e-6)
