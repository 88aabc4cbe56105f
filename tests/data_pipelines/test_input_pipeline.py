"""Grain input pipeline: batches, exact resume, per-process sharding, bad records."""

import numpy as np
import pytest

from data_pipelines import input_pipeline as IP
from data_pipelines.synthetic import SegzeroSynthetic, synthetic_config
from segzero_jax.models.qwen2_5_vl import processor as P
from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

BUILDER = dict(image_size=64, num_train=24, num_validation=4, num_test=4, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfds")
    SegzeroSynthetic(data_dir=str(path), config=synthetic_config(**BUILDER)).download_and_prepare()
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return QwenTokenizer.default()


def _config(data_dir, **kw):
    cfg = dict(dataset="synthetic", split="train", data_dir=data_dir, builder_config=BUILDER, batch_size=4,
               max_prompt_length=200, image_size=56, seed=0, process_index=0, process_count=1,
               build_if_missing=False)
    cfg.update(kw)
    return cfg


def test_batch_contents(data_dir, tokenizer):
    batch = next(iter(IP.make_input_pipeline(_config(data_dir), tokenizer=tokenizer)))
    assert batch["input_ids"].shape == (4, 200) and batch["input_ids"].dtype == np.int32
    assert batch["attention_mask"].dtype == np.int32
    assert batch["pixel_values"].shape == (4 * 16, 1176) and batch["pixel_values"].dtype == np.float32
    np.testing.assert_array_equal(batch["image_grid_thw"], [[1, 4, 4]] * 4)
    np.testing.assert_array_equal(batch["original_size"], [[64, 64]] * 4)
    source = SegzeroSynthetic(data_dir=data_dir, config=synthetic_config(**BUILDER)).as_data_source("train")
    records = {source[i]["image_id"].decode(): source[i] for i in range(len(source))}
    for b in range(4):
        mask = batch["attention_mask"][b]
        n = int(mask.sum())
        assert (mask[: 200 - n] == 0).all() and (mask[200 - n:] == 1).all()  # left padding
        assert (batch["input_ids"][b, : 200 - n] == tokenizer.pad_id).all()
        rec = records[str(batch["image_id"][b])]
        expected = P.segzero_prompt(rec["question"].decode(), (1, 4, 4))
        assert tokenizer.decode(batch["input_ids"][b, 200 - n:]) == expected
        assert list(batch["input_ids"][b, 200 - n:]) == tokenizer.encode(expected)
        # Ground truth mapped from the stored 64 px frame onto the 56 px policy frame as
        # Seg-Zero's data preparation does: factor = 56 / 64, then int(v * factor + 0.5).
        factor = 56 / 64
        np.testing.assert_array_equal(batch["bbox"][b], [int(v * factor + 0.5) for v in rec["bbox"]])
        np.testing.assert_array_equal(batch["points"][b].reshape(-1),
                                      [int(v * factor + 0.5) for v in rec["points"].reshape(-1)])
    # Pixels are the processor's output for the image resized with PIL bilinear.
    import io
    from PIL import Image

    rec = records[str(batch["image_id"][0])]
    resized = P.resize_for_policy(Image.open(io.BytesIO(rec["image"])), 56)
    patches, _ = P.ImageProcessor().process(resized)
    np.testing.assert_array_equal(batch["pixel_values"][:16], patches)


def test_iterator_state_resumes_exactly(data_dir, tokenizer):
    cfg = _config(data_dir, seed=11)
    it = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(7)]  # crosses the epoch boundary (24 records / 4)
    resumed = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        assert list(got["image_id"]) == list(want["image_id"])
        for key in ("input_ids", "attention_mask", "pixel_values", "bbox", "points"):
            np.testing.assert_array_equal(got[key], want[key])
    # The seed matters and the shuffle is not the identity.
    first = [str(x) for x in next(iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer)))["image_id"]]
    other = [str(x) for x in next(iter(IP.make_input_pipeline(_config(data_dir, seed=12),
                                                                 tokenizer=tokenizer)))["image_id"]]
    assert first != other


@pytest.mark.slow
def test_worker_processes_cover_the_epoch_and_resume(data_dir, tokenizer):
    """worker_count > 0 (outside an absl app): same examples per epoch, exact resume with workers."""
    def ids(batches):
        return [str(x) for b in batches for x in b["image_id"]]

    single = ids(IP.make_input_pipeline(_config(data_dir, num_epochs=1), tokenizer=tokenizer))
    cfg = _config(data_dir, num_epochs=1, worker_count=2)
    it = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    first = next(it)
    state = it.get_state()
    rest = list(it)
    workers = ids([first] + rest)
    assert len(workers) == 24 and sorted(workers) == sorted(single)
    resumed = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    resumed.set_state(state)
    again = list(resumed)
    assert ids(again) == ids(rest)
    np.testing.assert_array_equal(again[-1]["pixel_values"], rest[-1]["pixel_values"])


def test_two_processes_see_disjoint_shards(data_dir, tokenizer):
    seen = []
    for index in range(2):
        cfg = _config(data_dir, process_index=index, process_count=2, num_epochs=1, batch_size=4)
        ids = [str(x) for batch in IP.make_input_pipeline(cfg, tokenizer=tokenizer) for x in batch["image_id"]]
        assert len(ids) == 12 and len(set(ids)) == 12  # 2 per batch per process, one epoch of its half
        seen.append(set(ids))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 24


def test_bad_records_are_skipped_and_counted(data_dir, tokenizer):
    source = SegzeroSynthetic(data_dir=data_dir, config=synthetic_config(**BUILDER)).as_data_source("train")
    good = [dict(source[i]) for i in range(6)]
    corrupt = {**good[0], "image": b"\xff\xd8not a jpeg", "image_id": b"corrupt"}
    missing = {k: v for k, v in good[1].items() if k != "bbox"}
    empty_q = {**good[2], "question": b"  "}
    records = good + [corrupt, missing, empty_q]
    cfg = _config(data_dir, shuffle=False, num_epochs=1, batch_size=3)
    loader = IP.make_input_pipeline(cfg, tokenizer=tokenizer, data_source=records)
    batches = list(loader)
    ids = [str(x) for b in batches for x in b["image_id"]]
    assert ids == [r["image_id"].decode() for r in good]
    pre = [op for op in loader._operations if isinstance(op, IP.SegZeroPreprocess)][0]
    assert pre.skipped == 3


def test_config_errors(data_dir, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="max_prompt_length=50"):
        next(iter(IP.make_input_pipeline(_config(data_dir, max_prompt_length=50), tokenizer=tokenizer)))
    with pytest.raises(ValueError, match="not divisible by process_count=3"):
        IP.make_input_pipeline(_config(data_dir, process_count=3), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown field"):
        IP.make_input_pipeline(_config(data_dir, batchsize=3), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="unknown dataset"):
        IP.make_input_pipeline(_config(data_dir, dataset="coco"), tokenizer=tokenizer)
    with pytest.raises(FileNotFoundError, match="data_pipelines.build --dataset=synthetic"):
        IP.make_input_pipeline(_config(str(tmp_path)), tokenizer=tokenizer)


def test_reasonseg_through_the_pipeline(tmp_path, tokenizer):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = tmp_path / "manual" / "reasonseg_val"
    folder.mkdir(parents=True)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buf, format="PNG")
    pq.write_table(pa.table({"image": [buf.getvalue()] * 2, "mask": [mask.tolist()] * 2,
                             "text": ["Where is it.", "the box"], "image_id": ["a", "b"], "ann_id": ["a", "b"],
                             "img_height": [30, 30], "img_width": [40, 40]}), folder / "val.parquet")
    cfg = dict(dataset="reasonseg", split="validation", data_dir=str(tmp_path / "tfds"),
               manual_dir=str(tmp_path / "manual"), builder_config={"source": "parquet"}, build_if_missing=True,
               batch_size=2, max_prompt_length=200, image_size=56, shuffle=False, num_epochs=1,
               process_index=0, process_count=1)
    batches = list(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    assert len(batches) == 1
    batch = batches[0]
    # int(v * 56 / 40 + 0.5), int(v * 56 / 30 + 0.5): integers, as Seg-Zero's targets are
    # (float scaling gave 9.33 and 35.47 here).
    np.testing.assert_array_equal(batch["bbox"][0], [14, 9, 41, 35])
    np.testing.assert_array_equal(batch["original_size"], [[30, 40], [30, 40]])
    assert "Please find 'where is it' with bbox" in tokenizer.decode(batch["input_ids"][0])


def test_iterator_state_round_trips_through_orbax(data_dir, tokenizer, tmp_path):
    import grain.python as grain
    import orbax.checkpoint as ocp

    cfg = _config(data_dir, seed=5)
    it = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    next(it)
    manager = ocp.CheckpointManager(str(tmp_path / "ckpt"), item_handlers={"data": grain.PyGrainCheckpointHandler()})
    manager.save(1, args=ocp.args.Composite(data=grain.PyGrainCheckpointSave(it)))
    manager.wait_until_finished()
    want = [next(it) for _ in range(2)]
    restored = iter(IP.make_input_pipeline(cfg, tokenizer=tokenizer))
    manager.restore(1, args=ocp.args.Composite(data=grain.PyGrainCheckpointRestore(restored)))
    for batch in want:
        got = next(restored)
        assert list(got["image_id"]) == list(batch["image_id"])
        np.testing.assert_array_equal(got["input_ids"], batch["input_ids"])


@pytest.mark.slow
def test_batches_feed_the_policy(data_dir, tokenizer):
    """A pipeline batch goes straight into the policy: image tokens match the features, the
    equal-size images run as a vision batch, prefill + decode and the response log-probs run."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, init_cache, preset, vision_layout
    from segzero_jax.models.qwen2_5_vl.model import init_params

    batch = next(iter(IP.make_input_pipeline(_config(data_dir), tokenizer=tokenizer)))
    cfg = preset("tiny")
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    model = Qwen2_5_VL(cfg)
    layout = vision_layout(batch["image_grid_thw"], cfg.vision)
    assert layout["image_slots"].shape == (4,)
    ids, mask = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"])
    pixels = jnp.asarray(batch["pixel_values"])
    # Eager call: the image-token count is checked against the vision features.
    logits = model.apply({"params": params}, ids, pixels, batch["image_grid_thw"], mask)
    assert logits.shape == (4, 200, cfg.text.vocab_size) and bool(jnp.isfinite(logits[mask > 0]).all())

    grid = jnp.asarray(batch["image_grid_thw"])
    with pytest.raises(ValueError, match="image_grid_thw is needed for the 3-D rotary positions"):
        model.apply({"params": params}, ids, pixels, None, mask, vision_layout=layout)

    @jax.jit
    def rollout_step(p, ids, pixels, mask, layout):
        cache = init_cache(cfg, ids.shape[0], ids.shape[1] + 2)
        last, cache = model.apply({"params": p}, ids, cache, pixels, grid, mask, vision_layout=layout,
                                  method=Qwen2_5_VL.prefill)
        nxt, cache = model.apply({"params": p}, jnp.argmax(last, -1), cache, method=Qwen2_5_VL.decode)
        return last, nxt, cache["lengths"]

    last, nxt, lengths = rollout_step(params, ids, pixels, mask, layout)
    np.testing.assert_array_equal(np.asarray(lengths), batch["attention_mask"].sum(1) + 1)
    np.testing.assert_allclose(np.asarray(last), np.asarray(logits[:, -1]), atol=1e-4, rtol=0)
    response = jnp.concatenate([ids, jnp.argmax(last, -1)[:, None].astype(jnp.int32)], 1)
    lp, ent = model.apply({"params": params}, response, pixels, grid,
                          jnp.concatenate([mask, jnp.ones((4, 1), jnp.int32)], 1), vision_layout=layout,
                          num_targets=1, method=Qwen2_5_VL.response_log_probs)
    np.testing.assert_allclose(np.asarray(lp[:, 0]), np.asarray(jax.nn.log_softmax(last).max(-1)), atol=1e-4)
    assert bool((ent > 0).all()) and nxt.shape == (4, cfg.text.vocab_size)


def test_processor_pixel_limits_are_seg_zeros(tokenizer):
    """Seg-Zero (and the released Qwen2.5-VL preprocessor_config) use min/max pixels 3136 /
    12845056; the transformers class default max (1280 tokens) would shrink a 1008^2 image."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buf, format="PNG")
    record = {"image": buf.getvalue(), "question": b"the box", "bbox": np.array([1, 2, 30, 20], np.float32),
              "points": np.array([[5, 6], [7, 8]], np.float32), "height": 30, "width": 40, "image_id": b"a"}
    settings = IP.resolve_settings({"dataset": "synthetic", "process_index": 0, "process_count": 1})
    assert (settings["min_pixels"], settings["max_pixels"]) == (3136, 12845056)
    processor = P.ImageProcessor(min_pixels=settings["min_pixels"], max_pixels=settings["max_pixels"])
    out = IP.SegZeroPreprocess(tokenizer, 1008, 2000, processor).map(record)
    np.testing.assert_array_equal(out["image_grid_thw"], [1, 72, 72])
    assert out["attention_mask"].sum() > 36 * 36
