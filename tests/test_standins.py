"""Stand-ins for the pretrained models: scene objects, warm-start targets, SAM2 and policy training.

The training tests compile the models (about three CPU-minutes together): marked slow."""

import io

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from data_pipelines.synthetic_scenes import generate_example
from experiments.make_standins import build_standins, load_split
from segzero_jax import checkpoint, standins
from segzero_jax.masks import mask_to_prompt
from segzero_jax.models import qwen2_5_vl
from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL
from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
from segzero_jax.models.sam2.model import Sam2
from segzero_jax.rl import reward_host
from segzero_jax.standins import sam2_standin, warm_start

DATA = {"dataset": "synthetic", "image_size": 56, "max_prompt_length": 256}
SAM2_SETTINGS = standins.Sam2StandinSettings(steps=6, batch_size=2, prompts_per_image=2, warmup_steps=1,
                                             eval_batch_size=4)
POLICY_SETTINGS = standins.WarmStartSettings(steps=6, batch_size=4, warmup_steps=1, eval_batch_size=4,
                                             eval_max_new_tokens=6)


def _records(split, count, size=64):
    return [generate_example(0, split, i, size) for i in range(count)]


@pytest.fixture(scope="module")
def train():
    return load_split(DATA, "train", source=_records("train", 8))


@pytest.fixture(scope="module")
def val():
    return load_split(DATA, "validation", source=_records("validation", 4))


def _tree_equal(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(np.asarray(x), np.asarray(y))), a, b)))


def test_plain_background_objects_finds_every_object_and_the_target():
    for i in range(8):
        record = generate_example(3, "train", i, 112)
        image = np.asarray(Image.open(io.BytesIO(record["image"])).convert("RGB"))
        objects = standins.plain_background_objects(image)
        assert 3 <= len(objects) <= 6
        want = mask_to_prompt(record["mask"])
        row = objects[np.argmin(np.abs(objects[:, :4] - want.bbox).sum(axis=1))]
        np.testing.assert_array_equal(row[:4], want.bbox)
        np.testing.assert_array_equal(row[4:].reshape(2, 2), want.points)


def test_answers_score_full_format_and_fit_the_response_budget(train):
    _, policy = train
    tokenizer = QwenTokenizer.default()
    rng = np.random.default_rng(0)
    for i in range(len(policy)):
        exact = standins.format_answer(policy.reasoning[i], policy.bbox[i], policy.points[i])
        scores = reward_host.host_reward(exact, (policy.bbox[i].tolist(), policy.points[i].tolist()))
        assert scores["total"] == 5.0, (exact, scores)
        box, pts = standins.warm_start_target(rng, policy.bbox[i], policy.points[i], policy.candidates[i],
                                              standins.TargetMix(), 56)
        text = standins.format_answer(policy.reasoning[i], box, pts)
        scores = reward_host.host_reward(text, (policy.bbox[i].tolist(), policy.points[i].tolist()))
        assert scores["thinking_format"] == scores["segmentation_format"] == 1.0
        assert len(tokenizer.encode(text)) + 1 <= 52
    with pytest.raises(ValueError, match="'<'"):
        standins.format_answer("a < b", [1, 2, 3, 4], [[1, 2], [3, 4]])


def test_warm_start_targets_are_decoys_or_coarse_boxes():
    bbox, points = np.array([20.0, 30.0, 50.0, 60.0]), np.array([[35.0, 45.0], [30.0, 40.0]])
    candidates = np.array([[20, 30, 50, 60, 35, 45, 30, 40], [70, 5, 90, 25, 80, 15, 75, 10],
                           [5, 80, 25, 100, 15, 90, 10, 85]], np.float32)
    rng = np.random.default_rng(0)
    exact = standins.TargetMix(decoy_fraction=1.0, coordinate_range=None)
    seen = {tuple(standins.warm_start_target(rng, bbox, points, candidates, exact, 112)[0]) for _ in range(50)}
    assert seen == {(70, 5, 90, 25), (5, 80, 25, 100)}          # never the referred object
    two_digit = standins.TargetMix(decoy_fraction=1.0)          # coordinates clamped to [10, 99]
    seen = {tuple(standins.warm_start_target(rng, bbox, points, candidates, two_digit, 112)[0]) for _ in range(50)}
    assert seen == {(70, 10, 90, 25), (10, 80, 25, 99)}
    coarse = standins.TargetMix(decoy_fraction=0.0, box_jitter=0.3, quantum=8)
    first = [standins.warm_start_target(np.random.default_rng(1), bbox, points, candidates, coarse, 112)
             for _ in range(2)]
    np.testing.assert_array_equal(first[0][0], first[1][0])
    for _ in range(200):
        box, pts = standins.warm_start_target(rng, bbox, points, candidates, coarse, 112)
        assert np.all((box % 8 == 0) | (box == 10) | (box == 99)) and box[0] < box[2] and box[1] < box[3]
        assert np.all((box >= 10) & (box <= 99))
        assert np.all(np.abs(box - bbox) <= 0.3 * 31 + 4)
        assert np.all((pts >= box[:2]) & (pts <= box[2:]))


@pytest.mark.slow
def test_sam2_trunk_split_matches_encode_image():
    config = standins.sam2_config(SAM2_SETTINGS)
    params = standins.init_standin_params(config, 0)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    feats = sam2_standin.trunk_features(config, params, images)
    embed, high = Sam2(config).apply({"params": params}, [jnp.asarray(f) for f in feats],
                                     method=sam2_standin._after_trunk)
    x = sam2_standin._preprocess(jnp.asarray(images), image_size=config.image_size)
    enc = Sam2(config).apply({"params": params}, x, method=Sam2.encode_image)
    np.testing.assert_allclose(embed, enc["image_embed"], atol=1e-5)
    for mine, theirs in zip(high, enc["high_res_feats"]):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)


@pytest.mark.slow
def test_sam2_init_ties_cross_attention_and_leaves_trunk_untrained(train):
    seg, _ = train
    config = standins.sam2_config(SAM2_SETTINGS)
    params = standins.init_standin_params(config, 0)
    layer = params["mask_decoder"]["transformer"]["layers_0"]
    np.testing.assert_array_equal(layer["cross_attn_image_to_token"]["q_proj_kernel"],
                                  layer["cross_attn_image_to_token"]["k_proj_kernel"])
    assert not np.array_equal(layer["self_attn"]["q_proj_kernel"], layer["self_attn"]["k_proj_kernel"])
    optimizer, step = sam2_standin.make_train_step(config, sam2_standin._schedule_only(SAM2_SETTINGS),
                                                   seg.masks.shape[1:])
    state = optimizer.init(params)
    feats = sam2_standin.trunk_features(config, params, seg.images[:2])
    rows = np.repeat(np.arange(2), 2)
    trunk_before = jax.tree.map(np.asarray, params["trunk"])
    losses = []
    for _ in range(6):  # one fixed batch: its loss must fall
        params, state, metrics = step(params, state, feats, seg.bbox[rows], seg.points[rows], seg.masks[rows])
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.8 * losses[0], losses
    assert _tree_equal(trunk_before, params["trunk"])


@pytest.mark.slow
def test_sam2_standin_writes_a_model_directory_and_is_deterministic(train, val, tmp_path):
    seg, _ = train
    seg_val, _ = val
    first = standins.train_sam2_standin(seg, seg_val, str(tmp_path / "a"), SAM2_SETTINGS)
    again = standins.train_sam2_standin(seg, seg_val, str(tmp_path / "b"), SAM2_SETTINGS)
    other = standins.train_sam2_standin(seg, None, str(tmp_path / "c"),
                                        standins.Sam2StandinSettings(**{**SAM2_SETTINGS.__dict__, "seed": 1}))
    config, params = checkpoint.restore_sam2(str(tmp_path / "a"))
    assert config == standins.sam2_config(SAM2_SETTINGS)
    assert _tree_equal(params, checkpoint.restore_sam2(str(tmp_path / "b"))[1])
    assert not _tree_equal(params, checkpoint.restore_sam2(str(tmp_path / "c"))[1])
    assert first["history"] == again["history"] and first["validation"] == again["validation"]
    assert (first["cycles"], first["steps"]) == (2, 12)  # 6 steps cannot reach the IoU bar: a warm restart
    assert 0.0 <= first["validation"]["miou_exact"] <= 1.0
    assert standins.evaluate_sam2(config, params, seg_val, SAM2_SETTINGS) == first["validation"]
    assert other["history"] != first["history"]


@pytest.mark.slow
def test_greedy_decode_matches_full_forward_argmax(train):
    _, policy = train
    config = standins.policy_config(POLICY_SETTINGS)
    params = nn.unbox(qwen2_5_vl.init_params(config, jax.random.key(3)))
    ids, mask = warm_start.trim_prompts(policy)
    ids, mask = ids[:2], mask[:2]
    patches = policy.pixel_values[:2].reshape(-1, policy.pixel_values.shape[-1])
    grid = policy.image_grid_thw[:2]
    tokens, lengths = standins.greedy_decode(config, params, ids, mask, patches, grid, 3, stop_ids=(-1,))
    assert np.asarray(lengths).tolist() == [3, 3]
    seq, seq_mask = ids, mask
    model = Qwen2_5_VL(config)
    for t in range(3):
        logits = model.apply({"params": params}, jnp.asarray(seq), jnp.asarray(patches), grid, jnp.asarray(seq_mask))
        nxt = np.asarray(jnp.argmax(logits[:, -1], axis=-1))
        np.testing.assert_array_equal(nxt, np.asarray(tokens)[:, t])
        seq = np.concatenate([seq, nxt[:, None].astype(np.int32)], axis=1)
        seq_mask = np.concatenate([seq_mask, np.ones((2, 1), np.int32)], axis=1)


@pytest.mark.slow
def test_warm_start_loss_falls_writes_a_model_directory_and_is_deterministic(train, val, tmp_path):
    _, policy = train
    _, policy_val = val
    first = standins.warm_start_policy(policy, policy_val, str(tmp_path / "a"), POLICY_SETTINGS)
    again = standins.warm_start_policy(policy, None, str(tmp_path / "b"), POLICY_SETTINGS)
    assert first["losses"][-1] < first["losses"][0] - 1.0, first["losses"]
    assert first["losses"] == again["losses"]
    config, params = checkpoint.restore_policy(str(tmp_path / "a"))
    assert config == standins.policy_config(POLICY_SETTINGS)
    assert _tree_equal(params, checkpoint.restore_policy(str(tmp_path / "b"))[1])
    v = first["validation"]
    assert v["num_samples"] == 4 and 0.0 <= v["format_rate"] <= 1.0 and v["response_tokens_max"] <= 6


def test_build_standins_keeps_complete_directories(train, tmp_path):
    (tmp_path / "models" / "sam2").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="incomplete"):
        build_standins(str(tmp_path), DATA, SAM2_SETTINGS, POLICY_SETTINGS, which="sam2")
    (tmp_path / "models" / "sam2" / checkpoint.CONFIG_FILE).write_text("{}")
    summary = build_standins(str(tmp_path), DATA, SAM2_SETTINGS, POLICY_SETTINGS, which="sam2")
    assert "sam2" not in summary
