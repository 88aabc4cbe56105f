"""Grain input pipeline: TFDS ArrayRecord data -> Seg-Zero policy batches (numpy).

    loader = make_input_pipeline(config)          # a grain DataLoader
    it = iter(loader)
    batch = next(it)
    state = it.get_state()                        # bytes; it.set_state(state) resumes exactly

Per process, each batch holds ``b = batch_size / process_count`` examples::

    input_ids       int32[b, T]      left-padded templated Seg-Zero prompt (T = max_prompt_length)
    attention_mask  int32[b, T]
    pixel_values    float32[b * N, 1176]  Qwen2.5-VL patches of the image resized to image_size^2
    image_grid_thw  int32[b, 3]
    bbox            float32[b, 4]    ground truth on the image_size frame (integer-valued)
    points          float32[b, 2, 2]
    original_size   int32[b, 2]      (height, width) of the original image
    image_id, question   str[b]      (host-side only; drop before device_put)

Config fields (a dict or ConfigDict): ``dataset`` (synthetic | refcocog | reasonseg), ``split``,
``data_dir``, ``batch_size`` (global), ``max_prompt_length``, ``image_size`` (840), ``seed``,
``process_index`` / ``process_count`` (default: this JAX process), and optionally ``shuffle``
(True), ``num_epochs`` (None = forever), ``builder_config`` (dict for the builder),
``manual_dir``, ``build_if_missing`` (True for synthetic), ``tokenizer_path`` (None = the
default Qwen2.5 vocabulary), ``min_pixels`` / ``max_pixels`` (3136 / 12845056: the released
Qwen2.5-VL processor's, as Seg-Zero trains), ``worker_count`` (0).
"""

from __future__ import annotations

import io
from typing import Any, Mapping

import grain.python as grain
import numpy as np
from absl import flags, logging
from PIL import Image

from data_pipelines import common
from segzero_jax.models.qwen2_5_vl import processor as P

_DEFAULTS = {
    "split": "train",
    "data_dir": None,
    "batch_size": 8,
    "max_prompt_length": 1300,
    "image_size": P.SEGZERO_IMAGE_SIZE,
    "seed": 0,
    "shuffle": True,
    "num_epochs": None,
    "process_index": None,
    "process_count": None,
    "builder_config": None,
    "manual_dir": None,
    "build_if_missing": None,
    "tokenizer_path": None,
    "min_pixels": P.RELEASED_MIN_PIXELS,  # Seg-Zero's data.min_pixels / data.max_pixels
    "max_pixels": P.RELEASED_MAX_PIXELS,
    "worker_count": 0,
}


def resolve_settings(config: Any) -> dict[str, Any]:
    """The pipeline's settings: `config` over the defaults, validated (ValueError names the field)."""
    given = dict(config.items()) if hasattr(config, "items") else dict(config)
    unknown = sorted(set(given) - set(_DEFAULTS) - {"dataset"})
    if unknown:
        raise ValueError(f"input pipeline config: unknown field(s) {unknown}")
    if "dataset" not in given:
        raise ValueError("input pipeline config: field 'dataset' is required (synthetic, refcocog or reasonseg)")
    out = {**_DEFAULTS, **given}
    if out["process_index"] is None or out["process_count"] is None:
        import jax

        out["process_index"] = jax.process_index() if out["process_index"] is None else out["process_index"]
        out["process_count"] = jax.process_count() if out["process_count"] is None else out["process_count"]
    for field in ("batch_size", "max_prompt_length", "image_size", "process_count"):
        if int(out[field]) <= 0:
            raise ValueError(f"input pipeline config: {field} must be positive, got {out[field]}")
    if not 0 <= int(out["process_index"]) < int(out["process_count"]):
        raise ValueError(f"input pipeline config: process_index={out['process_index']} is outside "
                         f"[0, process_count={out['process_count']})")
    if int(out["batch_size"]) % int(out["process_count"]):
        raise ValueError(f"input pipeline config: batch_size={out['batch_size']} is not divisible by "
                         f"process_count={out['process_count']}")
    return out


def make_builder(dataset: str, data_dir: str | None, builder_config: Mapping[str, Any] | None = None):
    """The TFDS builder of ``dataset`` (synthetic, refcocog, reasonseg) with its config."""
    kwargs = dict(builder_config or {})
    if dataset == "synthetic":
        from data_pipelines.synthetic import SegzeroSynthetic, synthetic_config

        return SegzeroSynthetic(data_dir=data_dir, config=synthetic_config(**kwargs))
    if dataset == "refcocog":
        from data_pipelines.refcocog import SegzeroRefcocog

        return SegzeroRefcocog(data_dir=data_dir, config=kwargs.pop("source", "parquet"), **kwargs)
    if dataset == "reasonseg":
        from data_pipelines.reasonseg import SegzeroReasonseg

        return SegzeroReasonseg(data_dir=data_dir, config=kwargs.pop("source", "json"), **kwargs)
    raise ValueError(f"unknown dataset {dataset!r}; expected synthetic, refcocog or reasonseg")


def load_data_source(config: Any):
    """Random-access TFDS source of ``config.split``; builds synthetic data when it is missing."""
    cfg = resolve_settings(config)
    builder = make_builder(cfg["dataset"], cfg["data_dir"], cfg["builder_config"])
    build = cfg["build_if_missing"]
    build = cfg["dataset"] == "synthetic" if build is None else build
    if not builder.is_prepared() and not build:
        raise FileNotFoundError(
            f"dataset {cfg['dataset']!r} is not built under data_dir={builder.data_dir!r}; build it with "
            f"`python -m data_pipelines.build --dataset={cfg['dataset']} --data_dir=... [--manual_dir=...]`")
    if build:
        was_built = builder.is_prepared()
        _prepare_once(builder, cfg["manual_dir"])
        if not was_built:  # a builder made before the data existed keeps an empty split list
            builder = make_builder(cfg["dataset"], cfg["data_dir"], cfg["builder_config"])
    return builder.as_data_source(split=cfg["split"])


def _prepare_once(builder, manual_dir: str | None) -> None:
    """Builds a missing dataset without processes racing each other: two TFDS builds of one
    dataset in one directory fail when the second renames its finished copy into place. In a
    multi-process run (every process makes its pipeline: this waits for all of them) the first
    process builds if the data is missing, every process waits for it, then a process whose
    `data_dir` still lacks the data (hosts with their own disks) builds its own copy; on shared
    storage the others find it built."""
    import jax
    from tensorflow_datasets.core import download

    def prepare():
        if not builder.is_prepared():
            builder.download_and_prepare(download_config=download.DownloadConfig(manual_dir=manual_dir))

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            prepare()
        # The barrier's name must be equal on every process: the dataset, not the directory
        # (hosts with their own disks may name their data_dirs differently).
        multihost_utils.sync_global_devices(f"input pipeline: {builder.info.full_name} built")
    prepare()


class SegZeroPreprocess(grain.MapTransform):
    """One stored example -> model inputs (or ``None`` when the record is unusable)."""

    def __init__(self, tokenizer, image_size: int, max_prompt_length: int, image_processor: P.ImageProcessor):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_prompt_length = max_prompt_length
        self.image_processor = image_processor
        self.pad_token_id = tokenizer.encode(P.IMAGE_PAD)
        if len(self.pad_token_id) != 1:
            raise ValueError(f"tokenizer does not map {P.IMAGE_PAD} to a single id")
        self.skipped = 0

    def map(self, example: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            return self._map(example)
        except common.BAD_EXAMPLE_ERRORS as err:
            if isinstance(err, PromptTooLongError):
                raise
            self.skipped += 1
            logging.warning("input pipeline: skipping example %r: %s: %s (%d skipped so far)",
                            _text(example.get("image_id", b"?")), type(err).__name__, err, self.skipped)
            return None

    def _map(self, example: Mapping[str, Any]) -> dict[str, Any]:
        with Image.open(io.BytesIO(example["image"])) as img:
            image = P.to_rgb(img)
        stored = (image.width, image.height)
        resized = P.resize_for_policy(image, self.image_size)
        pixel_values, grid = self.image_processor.process(resized)
        question = _text(example["question"])
        if not question.strip():
            raise ValueError("empty question")
        text = P.apply_chat_template(P.segzero_messages(question), add_generation_prompt=True)
        ids = self.tokenizer.encode(text)
        pad_id = self.pad_token_id[0]
        n_image = self.image_processor.num_image_tokens(grid)
        expanded: list[int] = []
        for token in ids:
            expanded.extend([token] * n_image if token == pad_id else [token])
        if len(expanded) > self.max_prompt_length:
            raise PromptTooLongError(
                f"prompt of example {_text(example.get('image_id', b'?'))!r} has {len(expanded)} tokens, more "
                f"than max_prompt_length={self.max_prompt_length} (image_size={self.image_size} alone takes "
                f"{n_image}); raise max_prompt_length")
        input_ids, attention_mask = P.left_pad(expanded, self.max_prompt_length, self.tokenizer.pad_id)
        bbox = np.asarray(example["bbox"], np.float64)
        points = np.asarray(example["points"], np.float64)
        if bbox.shape != (4,) or points.shape != (2, 2) or not (np.isfinite(bbox).all() and np.isfinite(points).all()):
            raise ValueError(f"bad bbox {bbox.tolist()} or points {points.tolist()}")
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "image_grid_thw": grid.astype(np.int32),
            # Integer targets on the policy frame, int(v * (image_size / stored) + 0.5), as
            # Seg-Zero's data preparation writes them (an identity for 840-frame records).
            "bbox": P.to_policy_frame(bbox, stored, self.image_size).astype(np.float32),
            "points": P.to_policy_frame(points, stored, self.image_size).astype(np.float32),
            "original_size": np.array([int(example["height"]), int(example["width"])], np.int32),
            "image_id": np.str_(_text(example.get("image_id", b""))),
            "question": np.str_(question),
        }


class PromptTooLongError(ValueError):
    """The templated prompt does not fit ``max_prompt_length`` (a configuration error)."""


class _DropSkipped(grain.FilterTransform):
    def filter(self, element) -> bool:
        return element is not None


class _FlattenPatches(grain.MapTransform):
    def map(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pv = batch["pixel_values"]
        return {**batch, "pixel_values": pv.reshape(pv.shape[0] * pv.shape[1], pv.shape[2])}


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, np.bytes_)) else str(value)


def _load_tokenizer(path: str | None):
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    return QwenTokenizer.default() if path is None else QwenTokenizer.from_file(path)


def make_input_pipeline(config: Any, tokenizer=None, data_source=None) -> grain.DataLoader:
    """A grain DataLoader of Seg-Zero policy batches for this process (see the module docstring).

    ``tokenizer`` (anything with ``encode`` and ``pad_id``) overrides ``config.tokenizer_path``;
    ``data_source`` (random access, TFDS records) overrides the dataset lookup.
    """
    cfg = resolve_settings(config)
    source = load_data_source(cfg) if data_source is None else data_source
    tokenizer = _load_tokenizer(cfg["tokenizer_path"]) if tokenizer is None else tokenizer
    per_process = int(cfg["batch_size"]) // int(cfg["process_count"])
    shard = grain.ShardOptions(shard_index=int(cfg["process_index"]), shard_count=int(cfg["process_count"]),
                               drop_remainder=True)
    sampler = grain.IndexSampler(num_records=len(source), shard_options=shard, shuffle=bool(cfg["shuffle"]),
                                 num_epochs=cfg["num_epochs"], seed=int(cfg["seed"]))
    image_processor = P.ImageProcessor(min_pixels=int(cfg["min_pixels"]), max_pixels=int(cfg["max_pixels"]))
    operations = [
        SegZeroPreprocess(tokenizer, int(cfg["image_size"]), int(cfg["max_prompt_length"]), image_processor),
        _DropSkipped(),
        grain.Batch(batch_size=per_process, drop_remainder=True),
        _FlattenPatches(),
    ]
    workers = int(cfg["worker_count"])
    if workers > 0 and not flags.FLAGS.is_parsed():
        # Grain's worker processes read its absl flags; outside an absl app (a notebook, a
        # test) nothing has parsed them, so take their defaults instead of failing in a worker.
        flags.FLAGS.mark_as_parsed()
    return grain.DataLoader(data_source=source, sampler=sampler, operations=operations,
                            worker_count=workers)
