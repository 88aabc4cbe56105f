"""Parity with Meta's sam2 on the real `sam2_hiera_t.yaml` architecture at 1024 x 1024
(random weights, float32): image embedding, high-res features and Seg-Zero's box + 2 points
prompt through the reference image predictor. One reference forward, one compile each."""

import numpy as np
import pytest
import torch

from tests.models.sam2.reference import (assert_close, assert_masks_agree, build_reference,
                                         reference_predictor, save_checkpoint)

from segzero_jax.models.sam2 import SamPredictor, load_checkpoint

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(2)
    ref = build_reference(None, seed=1, overrides=False)
    path = save_checkpoint(ref, str(tmp_path_factory.mktemp("sam2_hiera_t")))
    cfg, params = load_checkpoint(path)  # preset inferred from the file
    image = np.random.default_rng(2).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    rp = reference_predictor(ref, cfg)
    rp.set_image(image)
    jp = SamPredictor(cfg, params)
    jp.set_image(image)
    return cfg, rp, jp, image


def test_preset_is_inferred_as_hiera_tiny(tiny):
    cfg = tiny[0]
    assert (cfg.embed_dim, cfg.stages, cfg.global_att_blocks) == (96, (1, 2, 7, 2), (5, 7, 9))
    assert cfg.image_size == 1024


@pytest.mark.parity
def test_image_embedding_and_high_res_features(tiny):
    _, rp, jp, _ = tiny
    assert_close(jp.get_image_embedding(), rp._features["image_embed"].numpy(), "image_embed")
    for i, (a, b) in enumerate(zip(jp._features["high_res_feats"], rp._features["high_res_feats"])):
        assert_close(a, b.numpy().transpose(0, 2, 3, 1), f"high_res_feats[{i}]")


@pytest.mark.parity
def test_segzero_prompt_box_and_two_points(tiny):
    _, rp, jp, image = tiny
    kw = dict(box=np.array([120.0, 80.0, 420.0, 380.0]),
              point_coords=np.array([[220.0, 200.0], [300.0, 260.0]]), point_labels=np.array([1, 1]))
    for multimask in (True, False):
        rm, rs, rl = rp.predict(multimask_output=multimask, **kw)
        m, s, lo = jp.predict(multimask_output=multimask, **kw)
        assert lo.shape == (3 if multimask else 1, 256, 256) and m.shape[-2:] == image.shape[:2]
        assert_close(lo, rl, "low-res logits")
        assert_close(s, rs, "scores")
        assert_masks_agree(m, rm, "masks")
