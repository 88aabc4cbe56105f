"""TFDS builder of RefCOCOg in Seg-Zero's training form (840x840 image, bbox + two points).

Two sources (builder configs), both read from the manual directory:

* ``parquet``: Seg-Zero's published training files, ``<manual_dir>/refcocog_9k_840/**/train-*.parquet``
  with columns ``image`` (bytes or a {"bytes", "path"} struct), ``problem``, ``solution`` =
  ``<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>`` on the 840 frame, and optionally
  ``img_height`` / ``img_width`` / ``id``.
* ``coco``: raw RefCOCOg: ``<manual_dir>/refcocog/refs(umd).p`` (a pickle of builtin data only,
  read with a restricted unpickler), ``<manual_dir>/refcocog/instances.json`` (COCO style) and
  ``<manual_dir>/train2014/<file_name>`` images. Per ref, as Seg-Zero's data preparation: the
  first sentence's ``raw`` text as written (the published set's ``problem`` keeps case and the
  final period; the prompt lower-cases it and strips periods); the annotation's mask decoded by
  pycocotools; bbox and points from it (``segzero_jax.masks``) on the original image, mapped
  onto 840x840 with ``int(v * f + 0.5)``; the image resized to 840x840 with OpenCV's
  ``INTER_AREA`` and stored as PNG.

Fields: the common ones (``data_pipelines.common``) plus ``ann_id``; ``height`` / ``width``
are the original image size. Unusable records are skipped with a counted warning.
"""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import common
from segzero_jax.models.qwen2_5_vl.processor import SEGZERO_IMAGE_SIZE, to_policy_frame

PARQUET_DIR = "refcocog_9k_840"
REFS_FILE = os.path.join("refcocog", "refs(umd).p")
INSTANCES_FILE = os.path.join("refcocog", "instances.json")
IMAGES_DIR = "train2014"
INSTRUCTIONS = (
    f"For source 'parquet' put Seg-Zero's RefCOCOg training parquet files (train-*.parquet) under "
    f"<manual_dir>/{PARQUET_DIR}/. For source 'coco' put RefCOCOg's refs(umd).p and instances.json in "
    f"<manual_dir>/refcocog/ and the COCO train2014 images in <manual_dir>/{IMAGES_DIR}/.")


def coco_segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """COCO polygons, uncompressed RLE or compressed RLE -> bool[height, width], decoded by
    pycocotools as Seg-Zero's data preparation does (`frPyObjects` + `decode`); the polygons of
    one annotation are united."""
    from pycocotools import mask as coco_mask

    if isinstance(segmentation, list):
        if not segmentation:
            raise ValueError("no polygons")
        # (pycocotools segfaults on NaN or far-off vertices: common.polygon_vertices refuses them)
        polys = [common.polygon_vertices(poly, height, width).reshape(-1).tolist() for poly in segmentation]
        rles = coco_mask.frPyObjects(polys, height, width)
        return coco_mask.decode(rles).any(axis=2)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size", [height, width])
        if not isinstance(size, (list, tuple)) or len(size) != 2:
            raise ValueError(f"RLE size must be [height, width], got {size!r:.40}")
        size = [int(v) for v in size]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} differs from the image's {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if any(not isinstance(c, int) or c < 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"RLE runs must be non-negative integers covering {height * width} pixels")
            uncompressed = {"size": size, "counts": counts}
            return coco_mask.decode(coco_mask.frPyObjects(uncompressed, height, width)).astype(bool)
        if not isinstance(counts, (str, bytes)):
            raise ValueError(f"RLE counts of type {type(counts).__name__}")
        rle = {"size": size, "counts": counts.encode() if isinstance(counts, str) else counts}
        decoded = coco_mask.decode(rle)
        # pycocotools leaves pixels past a short run list unset rather than failing: a valid
        # string is exactly what encoding its own decoding gives back.
        if coco_mask.encode(np.asfortranarray(decoded))["counts"] != rle["counts"]:
            raise ValueError("RLE string is damaged (its runs do not cover the image exactly)")
        return decoded.astype(bool)
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def resize_area(rgb: np.ndarray, size: int) -> np.ndarray:
    """uint8[size, size, C] resized with OpenCV's ``INTER_AREA``, as Seg-Zero's data preparation
    does (pixel-area averaging; PIL's BOX filter instead takes the nearest pixel when enlarging)."""
    import cv2

    rgb = np.ascontiguousarray(rgb)
    out = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return out.reshape(size, size, *rgb.shape[2:])  # OpenCV drops a single channel axis


def _resize_area(rgb: np.ndarray, size: int) -> bytes:
    """The 840x840 training image, stored losslessly as PNG (as the published set stores it)."""
    return common.encode_png(resize_area(rgb, size))


class SegzeroRefcocog(tfds.core.GeneratorBasedBuilder):
    """RefCOCOg referring expressions with Seg-Zero's bbox + two-point targets on 840x840 images."""

    name = "segzero_refcocog"
    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="parquet", description="Seg-Zero's published training parquet"),
        tfds.core.BuilderConfig(name="coco", description="raw RefCOCOg (umd split) + COCO train2014"),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def __init__(self, *, file_format: str = "array_record", **kwargs):
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, description=__doc__.split("\n")[0],
            features=common.core_features(ann_id=tfds.features.Text()))

    def _generate_examples(self, examples):
        """The split generators below are generators already; this passes one through."""
        yield from examples

    def _split_generators(self, dl_manager):
        root = common.manual_dir(dl_manager, INSTRUCTIONS)
        if self.builder_config.name == "parquet":
            folder = os.path.join(root, PARQUET_DIR)
            files = common.find_files(folder, "*.parquet") if os.path.isdir(folder) else []
            splits: dict[str, list[str]] = {}
            for path in files:
                prefix = os.path.basename(path).split("-")[0].split(".")[0]
                split = {"val": "validation"}.get(prefix, prefix)
                if split in ("train", "validation", "test"):
                    splits.setdefault(split, []).append(path)
            if not splits:
                raise common.missing_manual_file(os.path.join(folder, "train-*.parquet"),
                                                 "RefCOCOg training parquet", INSTRUCTIONS)
            return {split: self._from_parquet(paths) for split, paths in splits.items()}
        for rel in (REFS_FILE, INSTANCES_FILE):
            if not os.path.isfile(os.path.join(root, rel)):
                raise common.missing_manual_file(os.path.join(root, rel), os.path.basename(rel), INSTRUCTIONS)
        if not os.path.isdir(os.path.join(root, IMAGES_DIR)):
            raise common.missing_manual_file(os.path.join(root, IMAGES_DIR), "COCO train2014 image folder",
                                             INSTRUCTIONS)
        refs = common.load_data_pickle(os.path.join(root, REFS_FILE))
        if not isinstance(refs, list):
            raise ValueError(f"{os.path.join(root, REFS_FILE)}: expected a list of refs, got {type(refs).__name__}")
        with open(os.path.join(root, INSTANCES_FILE), encoding="utf-8") as f:
            instances = json.load(f)
        by_split: dict[str, list] = {}
        for ref in refs:
            split = ref.get("split") if isinstance(ref, dict) else None
            split = {"val": "validation"}.get(split, split)
            if split in ("train", "validation", "test"):
                by_split.setdefault(split, []).append(ref)
        return {split: self._from_coco(root, items, instances) for split, items in by_split.items()}

    def _from_parquet(self, paths):
        skips = common.SkipCounter(f"{self.name}/parquet")
        for path in paths:
            base = os.path.dirname(path)
            rows = common.iter_parquet_rows(path, ["image", "problem", "solution", "img_height", "img_width", "id"])
            for row_index, row in enumerate(rows):
                where = f"{os.path.basename(path)} row {row_index}"
                try:
                    data, rgb = common.load_image(common.image_bytes(row["image"], base, where), where)
                    target = common.parse_solution(row["solution"])
                    question = row["problem"]
                    if not isinstance(question, str) or not question.strip():
                        raise ValueError("empty problem text")
                    height = int(row.get("img_height") or rgb.shape[0])
                    width = int(row.get("img_width") or rgb.shape[1])
                except common.BAD_EXAMPLE_ERRORS as err:
                    skips.skip(where, err)
                    continue
                key = f"{os.path.basename(path)}:{row_index}"
                yield key, {
                    "image": data, "question": question, **target, "height": height, "width": width,
                    "image_id": str(row.get("id") or key), "ann_id": str(row.get("id") or ""),
                }

    def _from_coco(self, root: str, refs, instances):
        skips = common.SkipCounter(f"{self.name}/coco")
        images = {img["id"]: img for img in instances.get("images", [])}
        anns = {ann["id"]: ann for ann in instances.get("annotations", [])}
        for ref in refs:
            where = f"ref {ref.get('ref_id', '?')}"
            try:
                info = images[ref["image_id"]]
                ann = anns[ref["ann_id"]]
                question = ref["sentences"][0]["raw"]
                if not isinstance(question, str) or not question.strip():
                    raise ValueError("empty sentence")
                with open(common.safe_join(os.path.join(root, IMAGES_DIR), info["file_name"]), "rb") as f:
                    _, rgb = common.load_image(f.read(), info["file_name"])
                height, width = rgb.shape[:2]
                mask = coco_segmentation_to_mask(ann["segmentation"], height, width)
                target = common.prompt_from_mask(mask)
            except common.BAD_EXAMPLE_ERRORS as err:
                skips.skip(where, err)
                continue
            original = (width, height)
            yield str(ref.get("ref_id", ref["ann_id"])), {
                "image": _resize_area(rgb, SEGZERO_IMAGE_SIZE),
                "question": question,
                "bbox": to_policy_frame(target["bbox"], original).astype(np.float32),
                "points": to_policy_frame(target["points"], original).astype(np.float32),
                "height": height, "width": width,
                "image_id": str(ref["image_id"]), "ann_id": str(ref["ann_id"]),
            }
