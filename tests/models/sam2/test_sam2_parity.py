"""Parity with Meta's sam2 (random weights, float32) on the small `test_tiny` architecture:
image features, prompt/mask decoding through the reference `SAM2ImagePredictor`, the jitted
batch path, the mask-input embedding, sharded params and the bf16 compute option."""

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from tests.models.sam2.reference import (assert_close, assert_masks_agree, build_reference,
                                         reference_predictor, save_checkpoint)

from segzero_jax.models.sam2 import (Sam2, SamPredictor, get_preset, load_checkpoint, low_res_masks,
                                     predict_batch, preprocess_image)

BOX = np.array([20.0, 15.0, 100.0, 70.0], np.float32)
PTS = np.array([[40.0, 30.0], [60.0, 50.0]], np.float32)
LAB = np.array([1, 1], np.int32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(2)
    cfg = get_preset("test_tiny")
    ref = build_reference(cfg, seed=0)
    path = save_checkpoint(ref, str(tmp_path_factory.mktemp("sam2_small")))
    cfg, params = load_checkpoint(path, cfg)
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    rp = reference_predictor(ref, cfg)
    rp.set_image(image)
    jp = SamPredictor(cfg, params)
    jp.set_image(image)
    return dict(cfg=cfg, ref=ref, params=params, path=path, image=image, rp=rp, jp=jp)


@pytest.mark.parity
@pytest.mark.slow
def test_image_features_match(setup):
    ref_feats = setup["rp"]._features
    ours = setup["jp"]._features
    assert_close(setup["jp"].get_image_embedding(), ref_feats["image_embed"].numpy(), "image_embed")
    for i, (a, b) in enumerate(zip(ours["high_res_feats"], ref_feats["high_res_feats"])):
        assert_close(a, b.numpy().transpose(0, 2, 3, 1), f"high_res_feats[{i}]")


@pytest.mark.parity
@pytest.mark.slow
def test_neck_levels_and_position_encoding_match(setup):
    cfg, ref = setup["cfg"], setup["ref"]
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = ref.image_encoder(x)
    enc = jax.jit(lambda p, im: Sam2(cfg).apply({"params": p}, im, method=Sam2.encode_image))(
        setup["params"], jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    for i in range(3):
        assert_close(enc["backbone_fpn"][i], out["backbone_fpn"][i].numpy().transpose(0, 2, 3, 1), f"fpn[{i}]")
        assert_close(enc["vision_pos_enc"][i], out["vision_pos_enc"][i][0].numpy().transpose(1, 2, 0), f"pos[{i}]")


def test_trunk_layout_plan():
    """Where x travels in window layout: test_tiny (whose parity with the reference is above)
    mixes window layout, q-pooling blocks inside windows (the second into 1 x 1 windows) and
    blocks that pad, and SAM2-Large
    changes layout twice (the first windows, and 2- to 16-windows in stage 3), its global blocks
    reading the 16-windows side by side."""
    from segzero_jax.models.sam2.hiera import MultiScaleBlock
    from segzero_jax.models.sam2.hiera_layout import layout_plan
    plan = layout_plan(get_preset("test_tiny"))
    assert [(run.start, run.layout) for run in plan] == [(0, 4), (1, 4), (2, 2), (3, 2), (4, 0), (6, 0),
                                                                    (7, 0), (8, 0)]
    padded = [run.start for run in plan if run.spec.window_size and not run.layout]
    assert padded == [4, 7, 8]
    large = layout_plan(get_preset("hiera_large"))
    assert [(run.start, run.count, run.spec.window_size, run.layout) for run in large] == [
        (0, 2, 8, 8), (2, 1, 8, 8), (3, 5, 4, 4), (8, 1, 4, 4), (9, 14, 16, 16), (23, 1, 0, 16), (24, 9, 16, 16),
        (33, 1, 0, 16), (34, 9, 16, 16), (43, 1, 0, 16), (44, 1, 16, 16), (45, 3, 8, 8)]
    assert [(run.out_hw, run.layout, run.out_layout) for run in large if run.spec.q_pool] == [
        ((128, 128), 8, 4), ((64, 64), 4, 2), ((32, 32), 16, 8)]   # pooling inside the windows
    tiny = get_preset("test_tiny")
    spec = tiny.blocks[-1]
    with pytest.raises(ValueError, match="does not fit the block"):
        MultiScaleBlock(spec, tiny, windowed=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 5, 5, spec.dim)))
    glob = tiny.blocks[tiny.global_att_blocks[0]]
    with pytest.raises(ValueError, match="4 rows do not group by 3"):
        MultiScaleBlock(glob, tiny, row_group=3).init(jax.random.PRNGKey(0), jnp.zeros((4, 2, 2, glob.dim)))


@pytest.mark.slow
@pytest.mark.parametrize("scan_blocks", [True, False])
def test_window_layout_equals_per_block_partition(monkeypatch, scan_blocks):
    """The planned layouts give exactly the features of the reference's way, every windowed
    block partitioning the map for itself (pinned to Meta's sam2 by the parity above), also
    with params sharded over a (2, 2, 2) mesh. The config has SAM2-Large's window sizes: runs
    carried in windows, q-pooling inside 8- and 4-windows, a change from 2- to 16-windows,
    global blocks over 2- and 16-windows, pooling 16- into 8-windows; remat on."""
    import flax.linen as nn

    from segzero_jax.models.sam2 import hiera, hiera_layout
    from segzero_jax.parallel import DEFAULT_RULES, logical_shardings, make_mesh
    cfg = get_preset("test_tiny").replace(stages=(2, 3, 4, 2), global_att_blocks=(6, 8), window_spec=(8, 4, 16, 8),
                                          image_size=256, window_pos_embed_bkg_spatial_size=(7, 7),
                                          remat_policy="full", scan_blocks=scan_blocks)
    plan = hiera_layout.layout_plan(cfg)
    assert [(run.start, run.count, run.layout) for run in plan] == [
        (0, 2, 8), (2, 1, 8), (3, 2, 4), (5, 1, 4), (6, 1, 2), (7, 1, 16), (8, 1, 16), (9, 1, 16), (10, 1, 8)]
    model = hiera.Hiera(cfg)
    x = jax.random.normal(jax.random.PRNGKey(1), (2, cfg.image_size, cfg.image_size, 3))
    params = nn.unbox(model.init(jax.random.PRNGKey(0), x))
    planned = jax.jit(model.apply)(params, x)
    mesh = make_mesh((2, 2, 2))
    sharded = jax.device_put(params, logical_shardings(jax.eval_shape(model.init, jax.random.PRNGKey(0), x),
                                                       mesh, DEFAULT_RULES))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        planned_sharded = jax.jit(model.apply)(sharded, x)
    monkeypatch.setattr(hiera_layout, "segment_layout", lambda spec, hw, current, q_stride: 0)
    per_block = jax.jit(model.apply)(params, x)
    for a, b, c in zip(planned, per_block, planned_sharded):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-5, atol=1e-5)


PROMPTS = {
    "box": dict(box=BOX),
    "points": dict(point_coords=PTS, point_labels=LAB),
    "box_2points": dict(box=BOX, point_coords=PTS, point_labels=LAB),
    "box_2points_single": dict(box=BOX, point_coords=PTS, point_labels=LAB, multimask_output=False),
    "negative_point_single": dict(point_coords=PTS, point_labels=np.array([1, 0]), multimask_output=False),
    "two_boxes": dict(box=np.stack([BOX, BOX + np.array([5, 5, -10, 10], np.float32)])),
    # what a policy can answer: an inverted box, points outside the image
    "inverted_box_points_outside": dict(box=np.array([100.0, 70.0, 20.0, 15.0], np.float32),
                                        point_coords=np.array([[-30.0, 200.0], [500.0, -5.0]], np.float32),
                                        point_labels=LAB),
    # an earlier prediction's logits as mask input, coordinates given in [0, 1]
    "normalized_box_with_mask_input": dict(
        box=BOX / np.array([120, 90, 120, 90], np.float32), normalize_coords=False,
        mask_input=np.random.default_rng(5).normal(size=(1, 32, 32)).astype(np.float32) * 4),
}


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_predict_matches_reference(setup, name):
    kw = PROMPTS[name]
    rm, rs, rl = setup["rp"].predict(**kw)
    m, s, lo = setup["jp"].predict(**kw)
    assert_close(lo, rl, "low-res logits")
    assert_close(s, rs, "scores")
    assert_masks_agree(m, rm, "masks")
    expected_m = 3 if kw.get("multimask_output", True) else 1
    assert s.shape[-1] == expected_m and m.shape[-2:] == setup["image"].shape[:2]


@pytest.mark.parity
@pytest.mark.slow
def test_unscanned_blocks_match_reference(setup):
    """`scan_blocks=False`: every Hiera block a module of its own, converted from the same
    checkpoint, gives the reference's features and masks."""
    cfg = setup["cfg"].replace(scan_blocks=False)
    _, params = load_checkpoint(setup["path"], cfg)
    assert "block_3" in params["trunk"] and not any(k.startswith("segment_") for k in params["trunk"])
    jp = SamPredictor(cfg, params)
    jp.set_image(setup["image"])
    assert_close(jp.get_image_embedding(), setup["rp"]._features["image_embed"].numpy(), "image_embed")
    for name in ("box_2points", "points"):
        rm, rs, rl = setup["rp"].predict(**PROMPTS[name])
        m, s, lo = jp.predict(**PROMPTS[name])
        assert_close(lo, rl, "low-res logits")
        assert_close(s, rs, "scores")
        assert_masks_agree(m, rm, "masks")


@pytest.mark.parity
def test_return_logits_matches_reference(setup):
    rm, _, _ = setup["rp"].predict(box=BOX, return_logits=True)
    m, _, _ = setup["jp"].predict(box=BOX, return_logits=True)
    assert_close(m, rm, "upsampled logits")


@pytest.mark.parity
@pytest.mark.slow
def test_single_mask_stability_fallback_both_branches(setup, tmp_path):
    """Token 0 unstable -> best multimask output; token 0 made confident -> token 0."""
    cfg = setup["cfg"]
    ref_stable = copy.deepcopy(setup["ref"])
    with torch.no_grad():
        ref_stable.sam_mask_decoder.output_hypernetworks_mlps[0].layers[2].weight.mul_(200.0)
    _, params_stable = load_checkpoint(save_checkpoint(ref_stable, str(tmp_path)), cfg)
    outcomes = []
    for ref, params in ((setup["ref"], setup["params"]), (ref_stable, params_stable)):
        rp = reference_predictor(ref, cfg)
        rp.set_image(setup["image"])
        jp = SamPredictor(cfg, params)
        jp.set_image(setup["image"])
        rm, rs, rl = rp.predict(box=BOX, multimask_output=False)
        m, s, lo = jp.predict(box=BOX, multimask_output=False)
        assert_close(lo, rl, "single-mask logits")
        assert_close(s, rs, "single-mask score")
        assert_masks_agree(m, rm, "single mask")
        _, multi_s, multi_lo = jp.predict(box=BOX, multimask_output=True)
        outcomes.append(bool(np.any(np.all(np.isclose(multi_lo, lo[0]), axis=(1, 2)))))
    assert outcomes == [True, False], f"fallback taken per model: {outcomes}"


@pytest.mark.parity
def test_mask_input_embedding_matches(setup):
    cfg, ref = setup["cfg"], setup["ref"]
    n = cfg.low_res_size
    masks = torch.randn(2, 1, n, n, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = ref.sam_prompt_encoder._embed_masks(masks).numpy().transpose(0, 2, 3, 1)
    ours = Sam2(cfg).apply({"params": setup["params"]}, jnp.asarray(masks.numpy()[:, 0]),
                           method=lambda m, x: m.prompt_encoder.embed_masks(x))
    assert_close(ours, theirs, "mask embedding")


@pytest.fixture(scope="module")
def batch_case(setup):
    """B=2 images x K=2 box + 2-point prompts and the float32 `predict_batch` outputs (one compile,
    shared by the tests below)."""
    cfg = setup["cfg"]
    rng = np.random.default_rng(7)
    images = [setup["image"], rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)]
    boxes = np.stack([np.stack([BOX, BOX + 7]), np.stack([BOX - 5, BOX + 3])]).astype(np.float32)
    points = np.stack([np.stack([PTS, PTS + 4]), np.stack([PTS - 3, PTS + 9])]).astype(np.float32)
    labels = np.ones((2, 2, 2), np.int32)
    x = preprocess_image(jnp.asarray(np.stack(images)), cfg.image_size)
    args = (x, jnp.asarray(boxes), jnp.asarray(points), jnp.asarray(labels), (90, 120))
    out = predict_batch(setup["params"], *args, config=cfg)
    return dict(images=images, boxes=boxes, points=points, labels=labels, args=args, out=out)


@pytest.mark.parity
@pytest.mark.slow
def test_predict_batch_matches_reference_per_image(setup, batch_case):
    """The jitted batch path vs the reference predictor, prompt by prompt."""
    cfg, out = setup["cfg"], batch_case["out"]
    boxes, points, labels = batch_case["boxes"], batch_case["points"], batch_case["labels"]
    assert out["masks"].shape == (2, 2, 3, 90, 120) and out["best_mask"].shape == (2, 2, 90, 120)
    rp = reference_predictor(setup["ref"], cfg)
    for b, image in enumerate(batch_case["images"]):
        rp.set_image(image)
        for k in range(2):
            rm, rs, rl = rp.predict(box=boxes[b, k], point_coords=points[b, k], point_labels=labels[b, k])
            assert_close(out["low_res_logits"][b, k], rl, f"logits[{b},{k}]")
            assert_close(out["scores"][b, k], rs, f"scores[{b},{k}]")
            assert_masks_agree(np.asarray(out["masks"][b, k]), rm, f"masks[{b},{k}]")
            best = int(np.argmax(rs))
            assert_masks_agree(np.asarray(out["best_mask"][b, k]), rm[best], f"best[{b},{k}]")


@pytest.mark.slow
def test_low_res_masks_equal_the_batch_path(setup):
    """The benchmark / AOT work (`low_res_masks`) is `predict_batch` without the resizing back."""
    cfg, params = setup["cfg"], setup["params"]
    s = cfg.image_size
    images = jnp.asarray(np.random.default_rng(4).normal(size=(2, s, s, 3)).astype(np.float32))
    boxes = jnp.asarray(np.stack([BOX, BOX + np.array([3, 2, -8, 9], np.float32)]))
    points, labels = jnp.asarray(np.stack([PTS, PTS[::-1]])), jnp.asarray(np.stack([LAB, np.array([1, 0])]))
    low, scores = jax.jit(lambda *a: low_res_masks(*a, config=cfg))(params, images, boxes, points, labels)
    ref = predict_batch(params, images, boxes[:, None], points[:, None], labels[:, None], (s, s), config=cfg)
    np.testing.assert_allclose(np.clip(np.asarray(low), -32, 32), np.asarray(ref["low_res_logits"][:, 0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(ref["scores"][:, 0]), atol=1e-6)


@pytest.mark.parity
@pytest.mark.slow
def test_downscaled_image_preprocessing_matches(setup):
    """An image larger than the model input: antialiased resize, then mask upsampling."""
    cfg = setup["cfg"]
    image = np.random.default_rng(11).integers(0, 256, (300, 220, 3), dtype=np.uint8)
    rp = reference_predictor(setup["ref"], cfg)
    rp.set_image(image)
    jp = SamPredictor(cfg, setup["params"])
    jp.set_image(image)
    assert_close(jp.get_image_embedding(), rp.get_image_embedding().numpy(), "image_embed")
    kw = dict(box=np.array([30, 40, 200, 260], np.float32), point_coords=np.array([[100, 120], [90, 200]]),
              point_labels=np.array([1, 1]))
    rm, rs, rl = rp.predict(**kw)
    m, s, lo = jp.predict(**kw)
    assert_close(lo, rl, "low-res logits")
    assert_masks_agree(m, rm, "masks")


@pytest.mark.parity
@pytest.mark.slow
def test_predict_batch_mixed_image_sizes(setup):
    """Images of different sizes in one call: per-image coordinate frames, masks on a canvas."""
    cfg = setup["cfg"]
    small = np.random.default_rng(9).integers(0, 256, (60, 80, 3), dtype=np.uint8)
    images = [setup["image"], small]
    x = jnp.stack([preprocess_image(jnp.asarray(im), cfg.image_size) for im in images])
    boxes = np.array([[BOX], [[10.0, 5.0, 70.0, 50.0]]], np.float32)
    points = np.array([[PTS], [[[30.0, 20.0], [50.0, 40.0]]]], np.float32)
    labels = np.ones((2, 1, 2), np.int32)
    out = predict_batch(setup["params"], x, jnp.asarray(boxes), jnp.asarray(points), jnp.asarray(labels),
                        (90, 120), config=cfg, image_hw=jnp.asarray([[90, 120], [60, 80]]))
    rp = reference_predictor(setup["ref"], cfg)
    for b, image in enumerate(images):
        h, w = image.shape[:2]
        rp.set_image(image)
        rm, rs, rl = rp.predict(box=boxes[b, 0], point_coords=points[b, 0], point_labels=labels[b, 0])
        assert_close(out["low_res_logits"][b, 0], rl, f"logits[{b}]")
        assert_close(out["scores"][b, 0], rs, f"scores[{b}]")
        masks = np.asarray(out["masks"][b, 0])
        assert_masks_agree(masks[:, :h, :w], rm, f"masks[{b}]")
        assert not masks[:, h:].any() and not masks[:, :, w:].any()


@pytest.mark.slow
def test_sharded_params_give_the_same_masks(setup, batch_case):
    import flax.linen as nn

    from segzero_jax.parallel import DEFAULT_RULES, make_mesh

    mesh = make_mesh((2, 2, 2))
    _, sharded = load_checkpoint(setup["path"], setup["cfg"], mesh=mesh)
    assert any(len(leaf.sharding.device_set) > 1 for leaf in jax.tree.leaves(sharded))
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        got = predict_batch(sharded, *batch_case["args"], config=setup["cfg"])
    assert_close(got["low_res_logits"], batch_case["out"]["low_res_logits"], "sharded logits")
    assert_close(got["scores"], batch_case["out"]["scores"], "sharded scores")


@pytest.mark.slow
def test_bf16_compute_stays_close(setup, batch_case):
    cfg16 = setup["cfg"].replace(dtype=jnp.bfloat16)
    a = batch_case["out"]
    b = predict_batch(setup["params"], *batch_case["args"], config=cfg16)
    assert b["low_res_logits"].dtype == jnp.float32
    scale = float(jnp.abs(a["low_res_logits"]).max())
    assert float(jnp.abs(a["low_res_logits"] - b["low_res_logits"]).max()) < 0.1 * scale
    assert float((a["masks"] == b["masks"]).mean()) > 0.9


@pytest.mark.slow
def test_trunk_gelu_forms(setup, batch_case, monkeypatch):
    """"auto" takes the trunk MLP's tanh GELU on a GPU in 16-bit compute (cuBLAS's fc1 epilogue;
    tests/test_gpu.py checks its accuracy there) and the exact form elsewhere; computed in
    bfloat16 arithmetic, as on this CPU, the tanh form still stays about as close to the float32
    reference as the exact form."""
    cfg = setup["cfg"]
    bf16 = cfg.replace(dtype=jnp.bfloat16)
    form = lambda c, gelu: c.replace(trunk_gelu=gelu).trunk_activation()
    assert form(cfg, "auto") == "gelu" and form(bf16, "auto") == "gelu"                   # on this CPU
    assert form(bf16, "gpu_auto") == "gelu_pytorch_tanh" and form(bf16, "tpu_auto") == "gelu"
    assert form(cfg, "gpu_auto") == "gelu" and form(cfg, "tanh") == "gelu_pytorch_tanh"    # float32
    assert form(bf16, "exact") == "gelu"
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert form(bf16, "auto") == "gelu_pytorch_tanh"
    monkeypatch.undo()
    with pytest.raises(ValueError, match="Sam2Config.trunk_gelu='erf'"):
        cfg.replace(trunk_gelu="erf")
    ref = batch_case["out"]
    errors, agreement = {}, {}
    for form in ("exact", "tanh"):
        out = predict_batch(setup["params"], *batch_case["args"], config=bf16.replace(trunk_gelu=form))
        errors[form] = float(jnp.abs(out["low_res_logits"] - ref["low_res_logits"]).mean())
        agreement[form] = float((out["masks"] == ref["masks"]).mean())
    assert errors["tanh"] <= 1.5 * errors["exact"], errors
    assert agreement["tanh"] >= agreement["exact"] - 0.005, agreement


def test_bad_inputs_are_named(setup):
    cfg, params = setup["cfg"], setup["params"]
    fresh = SamPredictor(cfg, params)
    with pytest.raises(RuntimeError, match="set_image"):
        fresh.predict(box=BOX)
    with pytest.raises(ValueError, match=r"RGB image \[H, W, 3\]"):
        fresh.set_image(np.zeros((4, 4), np.uint8))
    jp = setup["jp"]
    with pytest.raises(ValueError, match="point_labels must be supplied"):
        jp.predict(point_coords=PTS)
    with pytest.raises(ValueError, match="point_coords"):
        jp.predict(point_coords=PTS, point_labels=np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="box must be"):
        jp.predict(box=np.zeros(3))
    with pytest.raises(ValueError, match="mask_input must be"):
        jp.predict(box=BOX, mask_input=np.zeros((1, 8, 8)))
    x = jnp.zeros((1, cfg.image_size, cfg.image_size, 3))
    with pytest.raises(ValueError, match="needs boxes, points or both"):
        predict_batch(params, x, None, None, None, (90, 120), config=cfg)
    with pytest.raises(ValueError, match="share the leading"):
        predict_batch(params, x, jnp.zeros((1, 2, 4)), jnp.zeros((1, 3, 2, 2)), jnp.ones((1, 3, 2), jnp.int32),
                      (90, 120), config=cfg)
    with pytest.raises(ValueError, match=r"images must be \[B, 128, 128, 3\]"):
        predict_batch(params, jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 1, 4)), None, None, (90, 120), config=cfg)
