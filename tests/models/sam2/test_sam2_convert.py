"""Checkpoint converter: every preset matches Meta's config of the same name key-for-key and
shape-for-shape; bad files and mismatched configs fail with errors that name the problem."""

import os

import numpy as np
import pytest
import torch

from tests.models.sam2.reference import build_reference, save_checkpoint

from segzero_jax.models.sam2 import get_preset, load_checkpoint
from segzero_jax.models.sam2.convert import infer_preset, plan_conversion
from segzero_jax.models.tensor_files import WeightFileError

YAML = {"hiera_tiny": "configs/sam2/sam2_hiera_t.yaml", "hiera_small": "configs/sam2/sam2_hiera_s.yaml",
        "hiera_base_plus": "configs/sam2/sam2_hiera_b+.yaml", "hiera_large": "configs/sam2/sam2_hiera_l.yaml"}


def reference_architecture(config_file):
    """Key -> shape of Meta's model built from its yaml, and its per-block Hiera layout."""
    from sam2.build_sam import build_sam2

    model = build_sam2(config_file, ckpt_path=None, device="cpu")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    blocks = [(b.dim, b.dim_out, b.attn.num_heads, b.window_size, b.q_stride is not None)
              for b in model.image_encoder.trunk.blocks]
    extra = (model.image_size, model.image_encoder.scalp, model.image_encoder.neck.fpn_top_down_levels,
             model.image_encoder.neck.fpn_interp_model, model.directly_add_no_mem_embed,
             model.sam_mask_decoder.dynamic_multimask_via_stability,
             model.sam_mask_decoder.iou_prediction_head.sigmoid_output)
    del model
    return shapes, blocks, extra


@pytest.mark.parametrize("preset", sorted(YAML))
def test_preset_matches_reference_config(preset):
    shapes, blocks, extra = reference_architecture(YAML[preset])
    cfg = get_preset(preset)
    assert [(b.dim, b.dim_out, b.num_heads, b.window_size, b.q_pool) for b in cfg.blocks] == blocks
    assert extra == (cfg.image_size, cfg.scalp, list(cfg.fpn_top_down_levels), cfg.fpn_interp_model,
                     cfg.directly_add_no_mem_embed, cfg.dynamic_multimask_via_stability,
                     cfg.iou_prediction_use_sigmoid)
    plan = plan_conversion(shapes, cfg)
    used = {entry[0] for entry in plan}
    assert all(k.startswith(("image_encoder", "sam_", "no_mem_embed")) for k in used)
    assert any("trunk.blocks" in k for k in used) and "no_mem_embed" in used
    assert infer_preset({k: np.empty(0) if "patch_embed.proj.bias" not in k else np.empty(s)
                         for k, s in shapes.items()}) == preset


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    cfg = get_preset("test_tiny")
    ref = build_reference(cfg, seed=3)
    return cfg, ref.state_dict(), tmp_path_factory.mktemp("convert")


def _save(sd, directory, name, wrap=True):
    path = os.path.join(directory, name)
    torch.save({"model": sd} if wrap else sd, path)
    return path


@pytest.mark.slow
def test_plain_and_bf16_state_dicts_load(small_checkpoint):
    cfg, sd, d = small_checkpoint
    _, params = load_checkpoint(_save(sd, d, "wrapped.pt"), cfg)
    bf16 = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in sd.items()}
    _, params16 = load_checkpoint(_save(bf16, d, "plain_bf16.pt", wrap=False), cfg)
    a = np.asarray(params["trunk"]["pos_embed"])
    want = sd["image_encoder.trunk.pos_embed"][0].numpy().transpose(1, 2, 0)
    np.testing.assert_array_equal(a, want)
    np.testing.assert_allclose(np.asarray(params16["trunk"]["pos_embed"]), want, atol=0.02)
    stacked = np.asarray(params["prompt_encoder"]["point_embeddings"])
    np.testing.assert_array_equal(stacked[2], sd["sam_prompt_encoder.point_embeddings.2.weight"][0].numpy())


def test_unknown_key_is_named(small_checkpoint):
    cfg, sd, d = small_checkpoint
    bad = dict(sd, **{"sam_mask_decoder.extra_head.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="sam_mask_decoder.extra_head.weight"):
        load_checkpoint(_save(bad, d, "unknown.pt"), cfg)


def test_missing_key_is_named(small_checkpoint):
    cfg, sd, d = small_checkpoint
    bad = {k: v for k, v in sd.items() if k != "sam_mask_decoder.iou_token.weight"}
    with pytest.raises(ValueError, match="missing .*iou_token"):
        load_checkpoint(_save(bad, d, "missing.pt"), cfg)
    bad = {k: v for k, v in sd.items() if k != "sam_mask_decoder.output_hypernetworks_mlps.2.layers.0.weight"}
    with pytest.raises(ValueError, match="missing .*output_hypernetworks"):
        load_checkpoint(_save(bad, d, "missing_row.pt"), cfg)


@pytest.mark.slow
def test_wrong_config_is_a_shape_error(small_checkpoint):
    cfg, sd, d = small_checkpoint
    path = _save(sd, d, "ok.pt")
    with pytest.raises(ValueError, match=r"shape .* does not fit"):
        load_checkpoint(path, cfg.replace(embed_dim=24))
    with pytest.raises(ValueError, match="block 8 does not exist"):
        load_checkpoint(path, cfg.replace(stages=(1, 2, 4, 1)))
    inferred, _ = load_checkpoint(path)
    assert inferred == get_preset("test_tiny")
    shallower = {k: v for k, v in sd.items() if not k.startswith("image_encoder.trunk.blocks.8.")}
    with pytest.raises(ValueError, match="no SAM2 preset has a 8-block trunk of width 16"):
        load_checkpoint(_save(shallower, d, "shallow.pt"))
    with pytest.raises(ValueError, match="not a SAM2 state dict"):
        load_checkpoint(_save({"w": torch.zeros(1)}, d, "other.pt"))


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch sam2_payload_ran",))


def test_checkpoint_is_read_as_data_only(small_checkpoint, tmp_path, monkeypatch):
    cfg, sd, _ = small_checkpoint
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "evil.pt")
    torch.save({"model": dict(sd), "extra": _Payload()}, path)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        load_checkpoint(path, cfg)
    assert not (tmp_path / "sam2_payload_ran").exists()


def test_damaged_checkpoint_is_named(small_checkpoint, tmp_path):
    cfg, sd, _ = small_checkpoint
    path = tmp_path / "cut.pt"
    torch.save({"model": dict(sd)}, path)
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(WeightFileError, match=f"{path}: not a readable torch checkpoint"):
        load_checkpoint(str(path), cfg)
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(WeightFileError, match="text.pt: not a checkpoint of tensors"):
        load_checkpoint(str(tmp_path / "text.pt"), cfg)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(str(tmp_path / "missing.pt"), cfg)


def test_checkpoint_round_trip_with_save_helper(small_checkpoint):
    cfg, sd, d = small_checkpoint

    class Holder(torch.nn.Module):
        def state_dict(self, *a, **k):
            return sd

    _, params = load_checkpoint(save_checkpoint(Holder(), str(d)), "test_tiny")
    w = sd["image_encoder.trunk.blocks.5.attn.qkv.weight"].numpy()   # [3 * E, D]: q, k, v rows
    for c, part in enumerate("qkv"):   # the fused projection becomes three params
        kernel = np.asarray(params["trunk"]["segment_4"]["attn"][f"{part}_kernel"])  # blocks 4, 5 stacked
        np.testing.assert_array_equal(kernel[1], np.split(w, 3)[c].T.reshape(kernel.shape[1:]))


def test_shardings_place_the_loaded_params(small_checkpoint):
    import jax

    cfg, sd, d = small_checkpoint

    class Holder(torch.nn.Module):
        def state_dict(self, *a, **k):
            return sd

    path = save_checkpoint(Holder(), str(d))
    _, plain = load_checkpoint(path, "test_tiny")
    device = jax.devices()[-1]
    target = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(device), plain)
    _, placed = load_checkpoint(path, "test_tiny", shardings=target)
    assert all(leaf.devices() == {device} for leaf in jax.tree.leaves(placed))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), plain, placed)
    with pytest.raises(ValueError, match="not both"):
        load_checkpoint(path, "test_tiny", shardings=target, mesh=object())


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="global_att_blocks"):
        get_preset("hiera_tiny", global_att_blocks=(99,))
    with pytest.raises(ValueError, match="window_spec"):
        get_preset("hiera_tiny", image_size=112)
    with pytest.raises(ValueError, match="unknown SAM2 preset 'hiera_huge'"):
        get_preset("hiera_huge")
