"""Builds the stand-ins for the pretrained models (no weights can be downloaded) from a dataset split.

  python -m experiments.make_standins --workdir=DIR [--data_dir=DIR] [--sam2_steps=600] [--policy_steps=150]

writes DIR/models/sam2 (a SAM2 trained briefly on the train split's masks with box + point
prompts) and DIR/models/warm_start (a policy warm-started on Seg-Zero's answer format), both
model directories for `segzero_jax.checkpoint.restore_sam2` / `restore_policy`, and
DIR/models/standins.json (the settings, validation metrics and timings of each). A stand-in whose
directory is complete is kept (delete it to rebuild); each is written to `<dir>.partial` first
and renamed when complete, so an interrupted build leaves no half-written model.

From Python (the trainer): `build_standins(workdir, data, sam2=..., policy=...)`, where `data`
holds the input pipeline's fields (`dataset`, `data_dir`, `image_size`, `max_prompt_length`, ...).
The data is read with the input pipeline's own per-example transform, so the warm start sees
exactly the prompts GRPO will.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import time
from typing import Any, Callable, Optional

import numpy as np
from absl import app, flags, logging
from PIL import Image

from segzero_jax import checkpoint
from segzero_jax.standins import (PolicyExamples, Sam2StandinSettings, SegExamples, TargetMix, WarmStartSettings,
                                  plain_background_objects, short_reasoning, train_sam2_standin, warm_start_policy)

SAM2_DIR, POLICY_DIR, METRICS_FILE = "sam2", "warm_start", "standins.json"

FLAGS = flags.FLAGS


def load_split(data: dict, split: str, tokenizer=None, source=None) -> tuple[SegExamples, PolicyExamples]:
    """(SegExamples, PolicyExamples) of one split, in the data source's order (records the input
    pipeline would skip are left out of both). `source` (random access, TFDS records: a list of
    dicts will do) overrides the dataset lookup."""
    from data_pipelines import input_pipeline as ip
    from segzero_jax.models.qwen2_5_vl import processor as P
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    cfg = ip.resolve_settings({**data, "split": split})
    tokenizer = QwenTokenizer.default() if tokenizer is None else tokenizer
    source = ip.load_data_source(cfg) if source is None else source
    transform = ip.SegZeroPreprocess(tokenizer, int(cfg["image_size"]), int(cfg["max_prompt_length"]),
                                     P.ImageProcessor(min_pixels=int(cfg["min_pixels"]),
                                                      max_pixels=int(cfg["max_pixels"])))
    seg: dict[str, list] = {"images": [], "masks": [], "bbox": [], "points": []}
    pol: dict[str, list] = {k: [] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw",
                                            "bbox", "points", "candidates", "reasoning")}
    for index in range(len(source)):
        record = source[index]
        example = transform.map(record)
        if example is None:
            continue
        with Image.open(io.BytesIO(record["image"])) as img:
            image = np.asarray(P.to_rgb(img), np.uint8)
        if "mask" not in record:
            raise ValueError(f"dataset {cfg['dataset']!r} has no 'mask' field: the SAM2 stand-in needs masks")
        seg["images"].append(image)
        seg["masks"].append(np.asarray(record["mask"], bool))
        seg["bbox"].append(np.asarray(record["bbox"], np.float32))
        seg["points"].append(np.asarray(record["points"], np.float32))
        for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "bbox", "points"):
            pol[key].append(example[key])
        objects = plain_background_objects(image)
        stored = (image.shape[1], image.shape[0])
        pol["candidates"].append(P.to_policy_frame(objects.reshape(-1, 2), stored, int(cfg["image_size"]))
                                 .reshape(-1, 8).astype(np.float32))
        target = record.get("target")
        target = target.decode() if isinstance(target, bytes) else target
        pol["reasoning"].append(target.replace("<", " ") if target else short_reasoning(str(example["question"])))
    if not seg["images"]:
        raise ValueError(f"split {split!r} of {cfg['dataset']!r} holds no usable example")
    shapes = {im.shape for im in seg["images"]}
    if len(shapes) > 1:
        raise ValueError(f"split {split!r} holds images of {len(shapes)} sizes; the SAM2 stand-in needs one")
    seg_examples = SegExamples(**{k: np.stack(v) for k, v in seg.items()})
    policy = PolicyExamples(**{k: np.stack(v) for k, v in pol.items() if k not in ("candidates", "reasoning")},
                            candidates=tuple(pol["candidates"]), reasoning=tuple(pol["reasoning"]))
    return seg_examples, policy


def _build(directory: str, make: Callable[[str], dict], name: str, log) -> Optional[dict]:
    """Runs `make(partial_dir)` and renames the result to `directory`; None if already built."""
    if os.path.isfile(os.path.join(directory, checkpoint.CONFIG_FILE)):
        log(f"{name}: {directory} exists, kept")
        return None
    if os.path.exists(directory):
        raise FileExistsError(f"{directory} exists but holds no {checkpoint.CONFIG_FILE}: an incomplete model "
                              "directory; delete it to rebuild the stand-in")
    partial = directory + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)
    metrics = make(partial)
    os.replace(partial, directory)
    return metrics


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def build_standins(workdir: str, data: dict, sam2: Sam2StandinSettings = Sam2StandinSettings(),
                   policy: WarmStartSettings = WarmStartSettings(), which: str = "both",
                   log: Callable[[str], Any] = logging.info) -> dict:
    """Builds the missing stand-ins under WORKDIR/models (module docstring); returns and writes
    their metrics (WORKDIR/models/standins.json, merged with an earlier build's)."""
    models = os.path.join(workdir, "models")
    os.makedirs(models, exist_ok=True)
    metrics_path = os.path.join(models, METRICS_FILE)
    summary: dict[str, Any] = {}
    if os.path.isfile(metrics_path):
        with open(metrics_path) as f:
            summary = json.load(f)
    start = time.perf_counter()
    splits: dict[str, tuple] = {}

    def split(name: str):
        if name not in splits:
            splits[name] = load_split(data, name)
        return splits[name]

    if which in ("both", "sam2"):
        result = _build(os.path.join(models, SAM2_DIR),
                        lambda d: train_sam2_standin(split("train")[0], split("validation")[0], d, sam2, log),
                        "SAM2 stand-in", log)
        if result is not None:
            summary["sam2"] = {"settings": sam2, **result}
    if which in ("both", "policy"):
        result = _build(os.path.join(models, POLICY_DIR),
                        lambda d: warm_start_policy(split("train")[1], split("validation")[1], d, policy, log=log),
                        "warm start", log)
        if result is not None:
            summary["warm_start"] = {"settings": policy, **result}
    summary["data"] = dict(data)
    summary["last_build_seconds"] = time.perf_counter() - start
    with open(metrics_path, "w") as f:
        json.dump(_jsonable(summary), f, indent=2)
    return summary


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required")
    data = {"dataset": FLAGS.dataset, "data_dir": FLAGS.data_dir, "image_size": FLAGS.image_size,
            "max_prompt_length": FLAGS.max_prompt_length}
    sam2 = Sam2StandinSettings(steps=FLAGS.sam2_steps, batch_size=FLAGS.sam2_batch_size,
                               learning_rate=FLAGS.sam2_learning_rate, seed=FLAGS.seed)
    policy = WarmStartSettings(steps=FLAGS.policy_steps, batch_size=FLAGS.policy_batch_size,
                               learning_rate=FLAGS.policy_learning_rate, seed=FLAGS.seed,
                               response_tokens=FLAGS.response_tokens, reward=FLAGS.policy_reward,
                               preset=FLAGS.policy_preset,
                               mix=TargetMix(decoy_fraction=FLAGS.decoy_fraction, box_jitter=FLAGS.box_jitter,
                                             quantum=FLAGS.quantum))
    summary = build_standins(FLAGS.workdir, data, sam2, policy, FLAGS.only, log=print)
    brief = {}
    for key in ("sam2", "warm_start"):
        if key in summary:
            brief[key] = {k: v for k, v in summary[key].items() if k not in ("history", "losses", "settings")}
    print(json.dumps(_jsonable(brief), indent=2))


def define_flags() -> None:
    """The command's flags (defined only when run as a program: experiments.train imports this module)."""
    flags.DEFINE_string("workdir", None, "Run directory; the stand-ins go to WORKDIR/models/.")
    flags.DEFINE_string("dataset", "synthetic", "Dataset of the input pipeline (the stand-ins need plain-background "
                        "scenes of one image size: synthetic).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory (default: TFDS's).")
    flags.DEFINE_integer("image_size", 112, "The policy's image frame (data.image_size).")
    flags.DEFINE_integer("max_prompt_length", 256, "data.max_prompt_length.")
    flags.DEFINE_integer("seed", 0, "Seed of both stand-ins.")
    flags.DEFINE_integer("sam2_steps", Sam2StandinSettings.steps, "SAM2 stand-in training steps.")
    flags.DEFINE_integer("sam2_batch_size", Sam2StandinSettings.batch_size, "Images per SAM2 step.")
    flags.DEFINE_float("sam2_learning_rate", Sam2StandinSettings.learning_rate, "SAM2 peak learning rate.")
    flags.DEFINE_integer("policy_steps", WarmStartSettings.steps, "Warm-start steps.")
    flags.DEFINE_integer("policy_batch_size", WarmStartSettings.batch_size, "Prompts per warm-start step.")
    flags.DEFINE_float("policy_learning_rate", WarmStartSettings.learning_rate, "Warm-start peak learning rate.")
    flags.DEFINE_integer("response_tokens", WarmStartSettings.response_tokens, "rl.max_response_length.")
    flags.DEFINE_float("decoy_fraction", TargetMix.decoy_fraction, "Share of warm-start targets naming another object.")
    flags.DEFINE_float("box_jitter", TargetMix.box_jitter, "Warm-start box coordinates move by up to this share of "
                       "the box's width/height (0: exact boxes).")
    flags.DEFINE_integer("quantum", TargetMix.quantum, "Warm-start coordinates are rounded to multiples of this.")
    flags.DEFINE_string("policy_reward", WarmStartSettings.reward, "Host reward scheme scoring the warm start's "
                        "validation answers (seg_strict_soft_acc reports the raw box IoU).")
    flags.DEFINE_string("policy_preset", WarmStartSettings.preset, "Qwen2.5-VL preset of the policy stand-in.")
    flags.DEFINE_enum("only", "both", ["both", "sam2", "policy"], "Which stand-ins to build.")


if __name__ == "__main__":
    define_flags()
    app.run(main)
