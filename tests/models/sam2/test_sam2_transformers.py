"""transformers' `Sam2Model` safetensors -> our params: outputs match that model exactly."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.models.sam2.reference import assert_close

from segzero_jax.models.sam2 import Sam2, get_preset, load_checkpoint
from segzero_jax.models.sam2.config import transformers_config_kwargs
from segzero_jax.models.sam2.mask_decoder import select_masks
from segzero_jax.models.sam2.predictor import concat_prompts


def build_hf_model(cfg, seed):
    from transformers import Sam2Config as HfSam2Config
    from transformers import Sam2Model

    hf_cfg = HfSam2Config(**transformers_config_kwargs(cfg))
    torch.manual_seed(seed)
    model = Sam2Model(hf_cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.state_dict().values():
            if p.is_floating_point():
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
        # converted checkpoints hold one Gaussian for both point and dense encodings
        model.prompt_encoder.shared_embedding.positional_embedding.copy_(
            model.shared_image_embedding.positional_embedding)
    return model


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    cfg = get_preset("test_tiny")
    model = build_hf_model(cfg, seed=4)
    path = str(tmp_path_factory.mktemp("hf_sam2"))
    model.save_pretrained(path)
    return cfg, model, path


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("scan_blocks", [True, False])
def test_masks_scores_match_transformers(hf, scan_blocks):
    cfg, model, path = hf
    cfg, params = load_checkpoint(path, cfg.replace(scan_blocks=scan_blocks))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, cfg.image_size, cfg.image_size, generator=gen)
    boxes = torch.tensor([[[20.0, 15.0, 100.0, 70.0]], [[10.0, 30.0, 90.0, 120.0]]])
    points = torch.tensor([[[[40.0, 30.0], [60.0, 50.0]]], [[[30.0, 60.0], [70.0, 80.0]]]])
    labels = torch.ones(2, 1, 2, dtype=torch.long)

    @jax.jit
    def ours(params, images, boxes, points, labels):
        m = Sam2(cfg)
        enc = m.apply({"params": params}, images, method=Sam2.encode_image)
        coords, labs = concat_prompts(boxes, points, labels)
        masks, iou, obj = m.apply({"params": params}, enc["image_embed"], enc["high_res_feats"],
                                  coords[:, 0], labs[:, 0], method=Sam2.decode)
        return {multi: select_masks(cfg, masks, iou, multi) for multi in (True, False)}, obj

    got, obj = ours(params, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), jnp.asarray(boxes.numpy()),
                    jnp.asarray(points.numpy()), jnp.asarray(labels.numpy()))
    for multimask in (True, False):
        with torch.no_grad():
            want = model(pixel_values=x, input_points=points, input_labels=labels, input_boxes=boxes,
                         multimask_output=multimask)
        low, scores = got[multimask]
        assert low.shape == (2, 3 if multimask else 1, cfg.low_res_size, cfg.low_res_size)
        assert_close(low, want.pred_masks[:, 0].numpy(), f"low-res masks (multimask={multimask})")
        assert_close(scores, want.iou_scores[:, 0].numpy(), f"iou scores (multimask={multimask})")
        assert_close(obj, want.object_score_logits[:, 0].numpy(), "object scores")


def test_preset_inferred_and_untied_gaussians_rejected(hf, tmp_path):
    cfg, model, path = hf
    inferred, _ = load_checkpoint(os.path.join(path, "model.safetensors"))
    assert inferred == cfg
    from safetensors.torch import load_file, save_file
    state = load_file(os.path.join(path, "model.safetensors"))
    state["prompt_encoder.shared_embedding.positional_embedding"] += 1.0
    bad = str(tmp_path / "untied.safetensors")
    save_file(state, bad)
    with pytest.raises(ValueError, match="shared_embedding.positional_embedding.*differs"):
        load_checkpoint(bad, cfg)


def test_bf16_safetensors_load(hf, tmp_path):
    cfg, model, path = hf
    from safetensors.torch import load_file, save_file
    state = {k: v.to(torch.bfloat16) for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    f = str(tmp_path / "bf16.safetensors")
    save_file(state, f)
    _, params = load_checkpoint(f, cfg)
    want = state["vision_encoder.backbone.pos_embed"].float()[0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(np.asarray(params["trunk"]["pos_embed"]), want)
