"""TFDS builder of ReasonSeg (evaluation): masks, ignore regions and questions.

Two sources (builder configs), both read from the manual directory:

* ``json``: LISA's release, ``<manual_dir>/ReasonSeg/{train,val,test}/<name>.jpg`` next to a
  labelme-style ``<name>.json`` with ``text`` (a list of questions), ``is_sentence`` and ``shapes``
  (polygons labelled "target", "ignore", or the deprecated "flag"). As LISA draws it: polygons
  sorted by area, largest first, each filled with its label so smaller ones paint over larger
  ones; "ignore" regions become ``ignore_mask``, the rest ``mask``. One example per question
  (``question_index``; Seg-Zero evaluates question 0 only). Seg-Zero's own export (below) casts
  the label map to bool, so its ground truth is ``mask | ignore_mask``: use that union to
  reproduce its gIoU / cIoU. An image whose polygons are all "ignore" is kept (empty ``mask``;
  ``bbox`` / ``points`` from the ignore region), as that export keeps it.
* ``parquet``: Seg-Zero's export, ``<manual_dir>/reasonseg_val/**/*.parquet`` and
  ``<manual_dir>/reasonseg_test/**/*.parquet`` with ``image``, ``mask`` (rows of bools),
  ``text``, ``image_id``, ``ann_id``, ``img_height``, ``img_width``. That export merged the
  ignore regions into ``mask`` and has no ``is_sentence``: both are False there.

Fields: the common ones (``data_pipelines.common``; bbox and points on the original image,
from the mask) plus ``mask``, ``ignore_mask``, ``question_index``, ``ann_id``, ``is_sentence``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import common

JSON_DIR = "ReasonSeg"
PARQUET_DIRS = {"validation": "reasonseg_val", "test": "reasonseg_test"}
_JSON_SPLITS = {"train": "train", "validation": "val", "test": "test"}
INSTRUCTIONS = (
    f"For source 'json' put LISA's ReasonSeg release under <manual_dir>/{JSON_DIR}/ as train/, val/, test/ "
    f"folders of <name>.jpg + <name>.json. For source 'parquet' put Seg-Zero's ReasonSeg parquet files under "
    f"<manual_dir>/{PARQUET_DIRS['validation']}/ and <manual_dir>/{PARQUET_DIRS['test']}/.")


def _polygon(points, height: int, width: int) -> np.ndarray:
    """int32[1, K, 2] vertices of one labelme polygon, truncated as LISA's ``np.int32`` cast."""
    return common.polygon_vertices(points, height, width)[None].astype(np.int32)


def _draw(canvas: np.ndarray, polygon: np.ndarray, value: int) -> np.ndarray:
    """Paints a polygon as LISA's and Seg-Zero's mask code does: the closed one-pixel outline,
    then the interior (OpenCV ``polylines`` + ``fillPoly``)."""
    import cv2

    cv2.polylines(canvas, polygon, True, value, 1)
    cv2.fillPoly(canvas, polygon, value)
    return canvas


def labelme_masks(shapes, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """LISA's ReasonSeg polygons -> (target bool[H, W], ignore bool[H, W])."""
    valid = [s for s in shapes if str(s["label"]).lower() != "flag"]
    polygons = [_polygon(s["points"], height, width) for s in valid]
    areas = [int(_draw(np.zeros((height, width), np.uint8), p, 1).sum()) for p in polygons]
    order = np.argsort(areas, kind="stable")[::-1]
    labels = np.zeros((height, width), np.uint8)
    for i in order:
        _draw(labels, polygons[i], 255 if "ignore" in str(valid[i]["label"]).lower() else 1)
    return labels == 1, labels == 255


def _read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except UnicodeDecodeError:
        with open(path, encoding="cp1252") as f:
            return json.load(f)


class SegzeroReasonseg(tfds.core.GeneratorBasedBuilder):
    """ReasonSeg reasoning-segmentation questions with target and ignore masks."""

    name = "segzero_reasonseg"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="json", description="LISA's release (images + labelme JSON)"),
        tfds.core.BuilderConfig(name="parquet", description="Seg-Zero's parquet export"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__.split("\n")[0],
            features=common.core_features(
                mask=common.mask_feature(), ignore_mask=common.mask_feature(),
                question_index=tfds.features.Scalar(dtype=np.int32), ann_id=tfds.features.Text(),
                is_sentence=tfds.features.Scalar(dtype=np.bool_)))

    def _generate_examples(self, examples):
        """The split generators below are generators already; this passes one through."""
        yield from examples

    def _split_generators(self, dl_manager):
        root = common.manual_dir(dl_manager, INSTRUCTIONS)
        out = {}
        if self.builder_config.name == "json":
            for split, folder in _JSON_SPLITS.items():
                path = os.path.join(root, JSON_DIR, folder)
                if os.path.isdir(path) and common.find_files(path, "*.json"):
                    out[split] = self._from_json(path)
            if not out:
                raise common.missing_manual_file(os.path.join(root, JSON_DIR, "val", "<name>.json"),
                                                 "ReasonSeg annotations", INSTRUCTIONS)
            return out
        for split, folder in PARQUET_DIRS.items():
            path = os.path.join(root, folder)
            files = common.find_files(path, "*.parquet") if os.path.isdir(path) else []
            if files:
                out[split] = self._from_parquet(files)
        if not out:
            raise common.missing_manual_file(os.path.join(root, PARQUET_DIRS["validation"], "*.parquet"),
                                             "ReasonSeg parquet files", INSTRUCTIONS)
        return out

    def _from_json(self, folder: str):
        skips = common.SkipCounter(f"{self.name}/json")
        for json_path in common.find_files(folder, "*.json"):
            name = os.path.splitext(os.path.basename(json_path))[0]
            try:
                anno = _read_json(json_path)
                with open(os.path.join(os.path.dirname(json_path), name + ".jpg"), "rb") as f:
                    data, rgb = common.load_image(f.read(), name + ".jpg")
                height, width = rgb.shape[:2]
                mask, ignore = labelme_masks(anno["shapes"], height, width)
                # An image with "ignore" polygons only stays (Seg-Zero's export evaluates it, its
                # ground truth being the union): its bbox and points come from that union.
                target = common.prompt_from_mask(mask if mask.any() else mask | ignore)
                questions = anno["text"]
                questions = [questions] if isinstance(questions, str) else list(questions)
                if not questions or not all(isinstance(q, str) and q.strip() for q in questions):
                    raise ValueError("missing or empty question text")
            except (common.BAD_EXAMPLE_ERRORS + (json.JSONDecodeError,)) as err:
                skips.skip(os.path.basename(json_path), err)
                continue
            for index, question in enumerate(questions):
                yield f"{name}:{index}", {
                    "image": data, "question": question, **target, "height": height, "width": width,
                    "image_id": name, "ann_id": name, "mask": mask, "ignore_mask": ignore,
                    "question_index": index, "is_sentence": bool(anno.get("is_sentence", False)),
                }

    def _from_parquet(self, paths):
        skips = common.SkipCounter(f"{self.name}/parquet")
        columns = ["image", "mask", "text", "image_id", "ann_id", "img_height", "img_width"]
        for path in paths:
            base = os.path.dirname(path)
            for row_index, row in enumerate(common.iter_parquet_rows(path, columns)):
                where = f"{os.path.basename(path)} row {row_index}"
                try:
                    data, rgb = common.load_image(common.image_bytes(row["image"], base, where), where)
                    mask = np.asarray(row["mask"], dtype=bool)
                    if mask.shape != rgb.shape[:2]:
                        raise ValueError(f"mask shape {mask.shape} differs from image shape {rgb.shape[:2]}")
                    target = common.prompt_from_mask(mask)
                    question = row["text"]
                    if not isinstance(question, str) or not question.strip():
                        raise ValueError("empty text")
                    height = int(row.get("img_height") or rgb.shape[0])
                    width = int(row.get("img_width") or rgb.shape[1])
                except common.BAD_EXAMPLE_ERRORS as err:
                    skips.skip(where, err)
                    continue
                image_id = str(row.get("image_id") or f"{os.path.basename(path)}:{row_index}")
                yield f"{os.path.basename(path)}:{row_index}", {
                    "image": data, "question": question, **target, "height": height, "width": width,
                    "image_id": image_id, "ann_id": str(row.get("ann_id") or image_id), "mask": mask,
                    "ignore_mask": np.zeros_like(mask), "question_index": 0, "is_sentence": False,
                }
