r"""Seg-Zero's evaluation of a policy + SAM2 on a dataset split: gIoU, cIoU, parse failures.

  python -m experiments.evaluate --checkpoint=ckpt/seg_zero_init --dataset=reasonseg \
      --data_dir=DATA --split=test --out=eval/reasonseg_test

Greedy answers (1,024 new tokens at most), batched, on Seg-Zero's 840 x 840 frame; the answer
parsed as Seg-Zero's `evaluation_scripts/evaluation.py` parses it and rescaled by width / 840,
height / 840; SAM2 prompted with the box and both points, the best of its three masks kept.
A sample whose answer fails to parse (or whose SAM2 call fails) counts I = 0, U = its
ground-truth area. Ignore regions: ``--protocol=segzero`` (ground truth = target ∪ ignore, as
Seg-Zero scores ReasonSeg) or ``--protocol=lisa`` (ignore pixels excluded from I and U).

``--responses=FILE.jsonl`` scores given answers instead (one ``{"id": ..., "response": ...}``
per line: any model's outputs, Seg-Zero's PyTorch release included); a policy is then not
needed (``--sam2`` alone will do). Sample ids: the records' ``image_id``, i.e. for ReasonSeg the
annotation file's stem (only each image's first question is asked), for the synthetic set
``<split>-<index:06d>``. RefCOCOg's records carry no masks and cannot be evaluated.

Writes ``OUT/metrics.json`` (``giou``, ``ciou``, ``num_samples``, ``parse_failures``,
``sam2_failures``, ``empty_unions``, response lengths, settings, timing) and
``OUT/samples.jsonl`` (per sample: ``id``, ``response``, ``think``, ``bbox`` and ``points`` on
the original image, ``intersection``, ``union``, ``iou``, failure reasons), and prints the
metrics as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from absl import app, flags

@dataclasses.dataclass
class Options:
    """The command's settings (its flags, same names and defaults)."""

    out: Optional[str] = None
    checkpoint: Optional[str] = None
    step: Optional[str] = None
    sam2: Optional[str] = None
    sam2_preset: Optional[str] = None
    dataset: str = "synthetic"
    split: str = "test"
    data_dir: Optional[str] = None
    manual_dir: Optional[str] = None
    builder_config: Optional[str] = None
    responses: Optional[str] = None
    allow_missing_responses: bool = False
    batch_size: int = 8
    max_new_tokens: int = 1024
    image_size: int = 840
    parser: str = "segzero"
    protocol: str = "segzero"
    limit: Optional[int] = None
    mesh: tuple = ("-1", "1", "1")
    progress: bool = True


def define_flags() -> None:
    """The absl flags (defined only when run as a program, so importing this module for its
    functions never clashes with other entry points' flags)."""
    d = Options()
    flags.DEFINE_string("out", d.out, "Output directory for metrics.json and samples.jsonl.")
    flags.DEFINE_string("checkpoint", d.checkpoint, "Model directory, experiments.convert output or training "
                        "workdir.")
    flags.DEFINE_string("step", d.step, "With a training workdir: latest, best or a step number.")
    flags.DEFINE_string("sam2", d.sam2, "SAM2 model directory or Meta's .pt (overrides the checkpoint's).")
    flags.DEFINE_string("sam2_preset", d.sam2_preset, "Preset of a Meta .pt (default: inferred from the file).")
    flags.DEFINE_enum("dataset", d.dataset, ["synthetic", "reasonseg", "refcocog"], "Dataset (TFDS builder).")
    flags.DEFINE_string("split", d.split, "Split: train, validation or test.")
    flags.DEFINE_string("data_dir", d.data_dir, "TFDS data directory.")
    flags.DEFINE_string("manual_dir", d.manual_dir, "Manual directory of the builder's source files.")
    flags.DEFINE_string("builder_config", d.builder_config, "Builder config as JSON, e.g. "
                        "'{\"source\": \"parquet\"}' for reasonseg or '{\"image_size\": 224}' for synthetic.")
    flags.DEFINE_string("responses", d.responses, "Score the answers of this JSONL file instead of generating.")
    flags.DEFINE_bool("allow_missing_responses", d.allow_missing_responses,
                      "With --responses: score only the ids the file holds.")
    flags.DEFINE_integer("batch_size", d.batch_size, "Prompts per generation batch (and SAM2 batch).")
    flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Generation budget per answer.")
    flags.DEFINE_integer("image_size", d.image_size, "Side of the square frame the policy sees and answers on.")
    flags.DEFINE_enum("parser", d.parser, ["segzero", "lenient"], "Answer parser (segzero = the reference).")
    flags.DEFINE_enum("protocol", d.protocol, ["segzero", "lisa"], "Ignore-region protocol.")
    flags.DEFINE_integer("limit", d.limit, "Evaluate only the first N samples of the split.")
    flags.DEFINE_list("mesh", list(d.mesh), "Mesh (data, fsdp, tensor) over the local devices.")
    flags.DEFINE_bool("progress", d.progress, "Show a progress bar.")


class InputError(Exception):
    """A problem with the command's inputs, reported as one line."""


def load_split(dataset: str, split: str, data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
               builder_config: Optional[dict] = None, limit: Optional[int] = None):
    """`RecordExamples` of a TFDS split (the synthetic set is built when missing)."""
    from data_pipelines.input_pipeline import load_data_source
    from segzero_jax.evaluation import RecordExamples

    source = load_data_source({"dataset": dataset, "split": split, "data_dir": data_dir,
                               "manual_dir": manual_dir, "builder_config": builder_config})
    if len(source) and "mask" not in source[0]:
        raise InputError(f"{dataset} records hold no ground-truth masks (only a box and points): "
                         "evaluate on synthetic or reasonseg")
    return RecordExamples(source, limit=limit)


def read_responses(path: str) -> dict[str, str]:
    """{"id": response} of a JSONL file; a malformed line or a repeated id names its line."""
    out: dict[str, str] = {}
    lines: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(f"{path}:{number}: not JSON ({err.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not isinstance(row.get("response"), str):
                raise InputError(f"{path}:{number}: expected {{\"id\": str, \"response\": str}}")
            if row["id"] in out:
                raise InputError(f"{path}:{number}: id {row['id']!r} repeats line {lines[row['id']]}")
            out[row["id"]], lines[row["id"]] = row["response"], number
    return out


def write_outputs(out_dir: str, result, extra: Optional[dict] = None) -> dict:
    """OUT/metrics.json and OUT/samples.jsonl; returns the metrics written."""
    os.makedirs(out_dir, exist_ok=True)
    metrics = {**result.metrics, **(extra or {})}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    with open(os.path.join(out_dir, "samples.jsonl"), "w", encoding="utf-8") as f:
        for sample in result.samples:
            f.write(json.dumps(sample.to_json(), ensure_ascii=False) + "\n")
    return metrics


def _mesh(sizes):
    import jax

    from segzero_jax.parallel import make_mesh
    if len(jax.devices()) == 1:
        return None
    return make_mesh(tuple(int(s) for s in sizes))


def _builder_config(text: Optional[str]) -> Optional[dict]:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--builder_config is not JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict):
        raise InputError(f"--builder_config must be a JSON object, got {text}")
    return value


def run(f: Options) -> dict:
    """The whole command; returns the metrics written to OUT/metrics.json."""
    import jax

    from segzero_jax.evaluation import Evaluator
    from segzero_jax.evaluation.runner import response_order
    from segzero_jax.segment import Segmenter
    from experiments.model_loading import load_models, load_sam2

    if not f.out:
        raise InputError("--out is required")
    if not f.checkpoint and not (f.responses and f.sam2):
        raise InputError("give --checkpoint (or --responses with --sam2)")
    for name in ("checkpoint", "sam2", "responses"):
        value = getattr(f, name)
        if value and not os.path.exists(value):
            raise InputError(f"--{name}={value}: no such file or directory")
    responses = read_responses(f.responses) if f.responses else None
    examples = load_split(f.dataset, f.split, f.data_dir, f.manual_dir, _builder_config(f.builder_config), f.limit)
    if not len(examples):
        raise InputError(f"split {f.split!r} of {f.dataset} holds no samples")
    if responses is not None:  # before any weight is read
        try:
            response_order(examples.ids, responses, f.allow_missing_responses)
        except ValueError as err:
            raise InputError(f"--responses={f.responses}: {err}") from None
    mesh = _mesh(f.mesh)
    if f.checkpoint:
        models = load_models(f.checkpoint, f.sam2, f.sam2_preset, f.step, mesh, need_policy=responses is None)
        sam2_config, sam2_params = models.sam2_config, models.sam2_params
    else:
        models = None
        sam2_config, sam2_params = load_sam2(f.sam2, f.sam2_preset, mesh)
    evaluator = Evaluator(examples, Segmenter(sam2_config, sam2_params, batch_size=f.batch_size, mesh=mesh),
                          tokenizer=models.tokenizer if models else None,
                          policy_config=models.policy_config if models else None,
                          image_size=f.image_size, batch_size=f.batch_size, max_new_tokens=f.max_new_tokens,
                          parser=f.parser, protocol=f.protocol, mesh=mesh, progress=f.progress)
    if responses is not None:
        result = evaluator.score_responses(responses, allow_missing=f.allow_missing_responses)
    else:
        result = evaluator.generate(models.policy_params)
    extra = {"dataset": f.dataset, "split": f.split, "checkpoint": f.checkpoint, "sam2": f.sam2,
             "responses": f.responses, "devices": jax.device_count()}
    return write_outputs(f.out, result, {k: v for k, v in extra.items() if v is not None})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from segzero_jax.checkpoint import CheckpointError
    options = Options(**{field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(Options)})
    try:
        metrics = run(options)
    except (InputError, FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(metrics, sort_keys=True))


if __name__ == "__main__":
    define_flags()
    app.run(main)
