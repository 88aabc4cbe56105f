"""Evaluation samples from dataset records: the image, the question, the target and ignore masks.

A record is a mapping with the fields the TFDS builders of `data_pipelines` store (encoded
``image`` bytes, ``question``, ``mask`` bool[H, W], optional ``ignore_mask``, ``height`` /
``width``, ``image_id``, optional ``question_index``). Sample ids are the records'
``image_id``: for ReasonSeg the annotation file's stem (LISA's release; Seg-Zero's export keeps
the same ids), for the synthetic set ``<split>-<index:06d>``. As Seg-Zero evaluates, only the
first question of an image is asked: records with ``question_index`` > 0 are left out.

`RecordExamples(source)` indexes a random-access source (e.g. a TFDS data source) once and
decodes a sample only when it is read, so a split never sits in memory decoded.
"""

from __future__ import annotations

import dataclasses
import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from segzero_jax.models.qwen2_5_vl.processor import to_rgb


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """image uint8[H, W, 3] (the original image); mask / ignore_mask bool[H, W]."""

    id: str
    question: str
    image: np.ndarray
    mask: np.ndarray
    ignore_mask: Optional[np.ndarray] = None

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


def _text(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value.item())
    return str(value)


def record_id(record: Mapping[str, Any]) -> str:
    if "image_id" not in record:
        raise KeyError("record has no 'image_id' field")
    return _text(record["image_id"])


def is_first_question(record: Mapping[str, Any]) -> bool:
    return int(record.get("question_index", 0)) == 0


def decode_record(record: Mapping[str, Any]) -> EvalExample:
    """One record -> EvalExample; a record the evaluation cannot use raises ValueError naming it."""
    sample_id = record_id(record)
    if "mask" not in record:
        raise ValueError(f"record {sample_id!r} has no 'mask' field: evaluation needs ground-truth masks "
                         f"(RefCOCOg's training records store only a box and points)")
    try:
        with Image.open(io.BytesIO(record["image"])) as img:
            image = np.asarray(to_rgb(img))
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"record {sample_id!r}: cannot decode its image ({err})") from None
    mask = np.asarray(record["mask"]).astype(bool)
    ignore = record.get("ignore_mask")
    ignore = None if ignore is None else np.asarray(ignore).astype(bool)
    size = image.shape[:2]
    declared = (int(record.get("height", size[0])), int(record.get("width", size[1])))
    for name, shape in (("mask", mask.shape), ("ignore_mask", None if ignore is None else ignore.shape),
                        ("height, width", declared)):
        if shape is not None and tuple(shape) != size:
            raise ValueError(f"record {sample_id!r}: {name} {tuple(shape)} differs from the image's "
                             f"{size[0]}x{size[1]} (evaluation needs the original image)")
    return EvalExample(sample_id, _text(record["question"]), image, mask, ignore)


class RecordExamples(Sequence[EvalExample]):
    """The evaluation samples of a random-access record source (first questions only).

    ``ids`` lists them in source order; ``index(id)`` finds one; items decode on access.
    Duplicate ids are an error naming the id."""

    def __init__(self, source: Sequence[Mapping[str, Any]], limit: Optional[int] = None):
        self._source = source
        self._rows: list[int] = []
        self.ids: list[str] = []
        self._where: dict[str, int] = {}
        for row in range(len(source)):
            record = source[row]
            if not is_first_question(record):
                continue
            sample_id = record_id(record)
            if sample_id in self._where:
                raise ValueError(f"sample id {sample_id!r} occurs twice in the split (records "
                                 f"{self._rows[self._where[sample_id]]} and {row})")
            self._where[sample_id] = len(self.ids)
            self.ids.append(sample_id)
            self._rows.append(row)
            if limit is not None and len(self.ids) >= limit:
                break

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return decode_record(self._source[self._rows[i]])

    def index(self, sample_id: str) -> int:
        if sample_id not in self._where:
            raise KeyError(sample_id)
        return self._where[sample_id]
