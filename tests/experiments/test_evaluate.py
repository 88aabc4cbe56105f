"""experiments.evaluate on tiny random models (a convert-style directory) and a synthetic split."""

import json
import os

import numpy as np
import pytest

from experiments import evaluate
from segzero_jax.models.qwen2_5_vl.processor import to_policy_frame
from tests.experiments import tiny_models
from tests.experiments.scripts import run_module

BUILDER = json.dumps(tiny_models.SYNTHETIC)
SIZE = tiny_models.SYNTHETIC["image_size"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    models = tiny_models.write_models(str(root / "models"))
    records = tiny_models.synthetic_split(str(root / "data"))
    return {"root": root, "models": models, "data": str(root / "data"), "records": records}


def _options(setup, **kw):
    return evaluate.Options(checkpoint=setup["models"], data_dir=setup["data"], builder_config=BUILDER,
                            progress=False, **kw)


def _answer(record, size=840):
    """A well-formed answer with the record's box and points on the `size` frame."""
    box = to_policy_frame(record["bbox"], (SIZE, SIZE), size).tolist()
    pts = to_policy_frame(record["points"], (SIZE, SIZE), size).tolist()
    obj = {"bbox": box, "points_1": pts[0], "points_2": pts[1]}
    return f"<think>it is the one on the left</think><answer>{json.dumps(obj)}</answer>"


def _write(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return str(path)


@pytest.mark.slow
def test_given_responses_are_scored_through_the_protocol(setup, tmp_path):
    records = [setup["records"][i] for i in range(len(setup["records"]))]
    ids = [r["image_id"].decode() for r in records]
    rows = [{"id": ids[0], "response": _answer(records[0])},
            {"id": ids[1], "response": "I cannot tell."},
            {"id": ids[2], "response": _answer(records[2]).replace("<think>it is the one on the left</think>", "")}]
    path = _write(tmp_path / "answers.jsonl", rows)
    metrics = evaluate.run(_options(setup, responses=path, out=str(tmp_path / "out")))
    samples = [json.loads(line) for line in open(tmp_path / "out" / "samples.jsonl")]
    assert json.load(open(tmp_path / "out" / "metrics.json")) == metrics
    assert [s["id"] for s in samples] == ids and metrics["num_samples"] == 3
    assert metrics["parse_failures"] == 2 and metrics["parser"] == "segzero" and metrics["protocol"] == "segzero"
    # the answer is rescaled from the 840 frame to the 56-pixel image: round(int(v) * 56 / 840)
    box840 = json.loads(rows[0]["response"].split("<answer>")[1].split("</answer>")[0])["bbox"]
    assert samples[0]["bbox"] == [round(int(v) * SIZE / 840) for v in box840]
    assert samples[0]["parse_error"] is None and samples[0]["union"] >= records[0]["mask"].sum()
    # failures count I = 0 and U = the target's area, never skipped
    for s, r in zip(samples[1:], records[1:]):
        assert s["parse_error"] and (s["intersection"], s["union"], s["iou"]) == (0, int(r["mask"].sum()), 0.0)
    assert metrics["giou"] == pytest.approx(np.mean([s["iou"] for s in samples]))
    assert metrics["ciou"] == pytest.approx(sum(s["intersection"] for s in samples) / sum(s["union"] for s in samples))
    partial = evaluate.run(_options(setup, responses=_write(tmp_path / "two.jsonl", rows[:2]), out=str(tmp_path / "p"),
                                    allow_missing_responses=True))
    assert partial["missing_responses"] == 1 and partial["num_samples"] == 2


def test_response_file_problems_name_the_id_or_line(setup, tmp_path):
    ids = [setup["records"][i]["image_id"].decode() for i in range(3)]
    ok = [{"id": k, "response": "x"} for k in ids]
    run = lambda rows, **kw: evaluate.run(_options(setup, responses=_write(tmp_path / "r.jsonl", rows),
                                                   out=str(tmp_path / "o"), **kw))
    with pytest.raises(evaluate.InputError, match="'test-999999'"):
        run(ok + [{"id": "test-999999", "response": "x"}])
    with pytest.raises(evaluate.InputError, match=r"r.jsonl:3: id '.*' repeats line 1"):
        run(ok[:2] + [ok[0]])
    with pytest.raises(evaluate.InputError, match=r"r.jsonl:2: not JSON"):
        run([ok[0], "{broken"])
    with pytest.raises(evaluate.InputError, match="no response for 1 sample"):
        run(ok[:2])


def test_records_without_masks_are_refused(monkeypatch):
    from data_pipelines import input_pipeline
    monkeypatch.setattr(input_pipeline, "load_data_source",
                        lambda cfg: [{"image": b"", "bbox": np.zeros(4), "image_id": b"r1"}])
    with pytest.raises(evaluate.InputError, match="refcocog records hold no ground-truth masks"):
        evaluate.load_split("refcocog", "test")


def test_command_line_errors_are_one_line(setup, tmp_path):
    missing = run_module("experiments.evaluate", f"--checkpoint={tmp_path}/absent", f"--out={tmp_path}/o",
                         timeout=120)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1] == f"error: --checkpoint={tmp_path}/absent: no such file or directory"
    answers = _write(tmp_path / "a.jsonl", [{"id": "nope", "response": "x"}])
    unknown = run_module("experiments.evaluate", f"--checkpoint={setup['models']}", f"--responses={answers}",
                         f"--data_dir={setup['data']}", f"--builder_config={BUILDER}", f"--out={tmp_path}/o",
                         timeout=300)
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "'nope'" in unknown.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_greedy_generation_end_to_end(setup, tmp_path):
    """The generate path as a user runs it: 3 samples in batches of 2 (the last padded), on 2
    devices (rows and SAM2 batches split over the data axis)."""
    from tests.experiments.scripts import run_json

    pytest.importorskip("segzero_jax.rl.sampler")
    out = tmp_path / "gen"
    metrics, _ = run_json("experiments.evaluate", f"--checkpoint={setup['models']}", f"--data_dir={setup['data']}",
                          f"--builder_config={BUILDER}", f"--out={out}", f"--image_size={SIZE}",
                          "--max_new_tokens=6", "--batch_size=2", "--noprogress", devices=2, timeout=600)
    samples = [json.loads(line) for line in open(out / "samples.jsonl")]
    assert metrics["num_samples"] == len(samples) == 3 and metrics["max_new_tokens"] == 6
    assert all(1 <= s["num_tokens"] <= 6 for s in samples)
    assert metrics["parse_failures"] + sum(s["parse_error"] is None for s in samples) == 3
    for s in samples:
        if s["parse_error"]:
            assert s["intersection"] == 0 and s["union"] > 0
    # the first sample's answer is what greedy decoding with the plain forward pass gives
    _assert_greedy(setup, samples[0], steps=min(3, samples[0]["num_tokens"]))


def _assert_greedy(setup, sample, steps):
    import jax
    import jax.numpy as jnp

    from experiments.model_loading import load_policy
    from segzero_jax.evaluation import RecordExamples, policy_batch
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL

    config, params, tok = load_policy(os.path.join(setup["models"], "policy"))
    examples = RecordExamples(setup["records"])
    ex = examples[examples.index(sample["id"])]
    batch = policy_batch([ex.image], [ex.question], tok, image_size=SIZE, length_multiple=1)
    prompt = batch["input_ids"][0].tolist()
    model, grid = Qwen2_5_VL(config), batch["image_grid_thw"]
    forward = jax.jit(lambda p, i, pv, m: model.apply({"params": p}, i, pv, grid, m))
    length = len(prompt) + steps  # one shape for every step: left-padded to the final length
    tokens = []
    for k in range(steps):
        row = prompt + tokens
        ids = np.full((1, length), tok.pad_id, np.int32)
        mask = np.zeros((1, length), np.int32)
        ids[0, length - len(row):], mask[0, length - len(row):] = row, 1
        logits = forward(params, ids, batch["pixel_values"], mask)
        tokens.append(int(jnp.argmax(logits[0, -1])))
    want = tok.decode(tokens, skip_special_tokens=True)
    assert sample["response"].startswith(want)


@pytest.mark.slow
def test_sam2_straight_from_metas_checkpoint(setup, tmp_path):
    """--responses with --sam2=Meta's .pt and no policy: the reference's weights, read directly."""
    pytest.importorskip("sam2")
    from segzero_jax.models.sam2 import get_preset
    from tests.models.sam2.reference import build_reference, save_checkpoint

    pt = save_checkpoint(build_reference(get_preset("test_tiny"), seed=2), str(tmp_path))
    record = setup["records"][0]
    rows = [{"id": setup["records"][i]["image_id"].decode(), "response": _answer(setup["records"][i])}
            for i in range(3)]
    metrics = evaluate.run(evaluate.Options(sam2=pt, sam2_preset="test_tiny", data_dir=setup["data"],
                                            builder_config=BUILDER, progress=False, out=str(tmp_path / "o"),
                                            responses=_write(tmp_path / "r.jsonl", rows)))
    assert metrics["sam2"] == pt and "checkpoint" not in metrics and metrics["parse_failures"] == 0
    first = json.loads(open(tmp_path / "o" / "samples.jsonl").readline())
    assert first["id"] == record["image_id"].decode() and first["sam2_score"] is not None
