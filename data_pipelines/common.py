"""Shared pieces of the builders: feature specs, skip accounting, safe file access, safe pickles.

Every builder stores the same core fields (TensorFlow-free TFDS features, ArrayRecord files):

    image     bytes: the encoded image (PNG or JPEG)
    question  text: the referring question, as written by the source
    bbox      float32[4]: (x1, y1, x2, y2) on the stored image's pixel frame
    points    float32[2, 2]: two (x, y) points inside the object, same frame
    height, width  int32: the ORIGINAL image size (predictions map back to it)
    image_id  text

plus builder-specific fields (masks, ignore masks, question types).
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from segzero_jax.masks import EmptyMaskError, mask_to_prompt

BAD_EXAMPLE_ERRORS = (OSError, KeyError, ValueError, TypeError, SyntaxError, EmptyMaskError,
                      Image.DecompressionBombError)


def core_features(**extra):
    """FeaturesDict of the fields shared by all builders, plus ``extra``."""
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=(), dtype=np.object_),
        "question": tfds.features.Text(),
        "bbox": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        "points": tfds.features.Tensor(shape=(2, 2), dtype=np.float32),
        "height": tfds.features.Scalar(dtype=np.int32),
        "width": tfds.features.Scalar(dtype=np.int32),
        "image_id": tfds.features.Text(),
        **extra,
    })


def mask_feature():
    import tensorflow_datasets as tfds

    return tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib")


class SkipCounter:
    """Counts and logs the examples a builder drops (corrupt image, missing field, empty mask)."""

    def __init__(self, source: str):
        self.source = source
        self.counts: collections.Counter = collections.Counter()

    def skip(self, where: str, err: BaseException) -> None:
        reason = type(err).__name__
        self.counts[reason] += 1
        logging.warning("%s: skipping %s: %s: %s (%d skipped so far)", self.source, where, reason, err,
                        sum(self.counts.values()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def missing_manual_file(path: str, what: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(f"missing {what}: expected {path!r}. {how}")


def safe_join(root: str, relative: str) -> str:
    """``root/relative``, refusing absolute paths and anything that resolves outside ``root``."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative) or "\x00" in relative:
        raise ValueError(f"unsafe file name {relative!r} (must be a relative path inside {root!r})")
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, relative))
    if os.path.commonpath([base, full]) != base:
        raise ValueError(f"file name {relative!r} escapes the directory {root!r}")
    return full


def load_image(data: bytes, where: str) -> tuple[bytes, np.ndarray]:
    """Decodes and checks an encoded image: (bytes to store, uint8[H, W, 3] RGB).

    JPEG and PNG bytes are stored as they are; other formats are re-encoded as PNG.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format
            rgb = np.asarray(img.convert("RGB"))
    except BAD_EXAMPLE_ERRORS as err:
        raise OSError(f"{where}: cannot decode image ({err})") from None
    if fmt not in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        data = buf.getvalue()
    return data, rgb


def polygon_vertices(points: Any, height: int, width: int) -> np.ndarray:
    """float64[K, 2] (x, y) vertices of a polygon given as [[x, y], ...] or COCO's flat
    [x0, y0, x1, y1, ...]; at least 3, finite, within twice the image side (the rasterisers,
    OpenCV and pycocotools, draw far-off or NaN vertices wrongly or crash on them)."""
    xy = np.asarray(points, dtype=np.float64)
    if xy.ndim == 1 and xy.size % 2 == 0:
        xy = xy.reshape(-1, 2)
    if xy.ndim != 2 or xy.shape[1] != 2 or len(xy) < 3:
        raise ValueError(f"polygon must be at least 3 (x, y) vertices, got an array of shape {xy.shape}")
    if not np.isfinite(xy).all() or np.abs(xy).max() > 2 * max(height, width):
        raise ValueError(f"polygon vertex not finite or far outside the {width}x{height} image")
    return xy


def encode_png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def prompt_from_mask(mask: np.ndarray) -> dict[str, np.ndarray]:
    prompt = mask_to_prompt(mask)
    return {"bbox": prompt.bbox.astype(np.float32), "points": prompt.points.astype(np.float32)}


_SOLUTION = re.compile(
    r"<box>\((-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)\),\((-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)\)</box>\s*"
    r"<points>\((-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)\),\((-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)\)</points>")


def parse_solution(text: str) -> dict[str, np.ndarray]:
    """``<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>`` -> bbox float32[4], points float32[2, 2]."""
    match = _SOLUTION.search(text.replace(" ", "")) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"solution {text!r} is not '<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>'")
    values = np.array([float(v) for v in match.groups()], dtype=np.float32)
    return {"bbox": values[:4], "points": values[4:].reshape(2, 2)}


_SAFE_GLOBALS = {("builtins", name) for name in ("set", "frozenset", "list", "dict", "tuple", "int", "float",
                                                 "str", "bytes", "bool", "complex", "bytearray")}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 pickles ``bytes`` at protocols 0-2 (``_codecs.encode(text, "latin1")``)."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError(f"refusing to load _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        module = "builtins" if module == "__builtin__" else module  # Python 2 pickles
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only builtin containers and scalars")


def load_data_pickle(path: str) -> Any:
    """Unpickles a file that must hold only builtin containers and scalars (no code, no objects).

    Python 2 pickles (like RefCOCOg's ``refs(umd).p``) load with byte strings decoded as UTF-8.
    """
    with open(path, "rb") as f:
        try:
            return _DataOnlyUnpickler(f, encoding="utf-8", errors="replace").load()
        except (pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as err:
            raise ValueError(f"{path}: not a data-only pickle ({err})") from None


def manual_dir(dl_manager, instructions: str) -> str:
    """The builder's manual directory, or an error saying what to put there."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:
        where = getattr(dl_manager, "_manual_dir", None)
        raise FileNotFoundError(
            f"manual directory {os.fspath(where) if where else '<unset>'!r} is missing or empty "
            f"(pass manual_dir=... / --manual_dir). {instructions}") from None


def iter_parquet_rows(path: str, columns: list[str]):
    """Rows of a parquet file as dicts (only ``columns`` that exist; absent ones are missing keys)."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError on a bad file
        raise ValueError(f"{path}: not a readable parquet file ({err})") from None
    present = [c for c in columns if c in file.schema_arrow.names]
    for batch in file.iter_batches(batch_size=32, columns=present):
        yield from batch.to_pylist()


def image_bytes(cell: Any, base_dir: str, where: str) -> bytes:
    """Encoded image of a parquet cell: raw bytes, or a datasets-style {"bytes", "path"} struct.

    A path (used only when no bytes are embedded) must stay inside ``base_dir``.
    """
    if isinstance(cell, (bytes, bytearray)):
        return bytes(cell)
    if isinstance(cell, dict):
        if cell.get("bytes"):
            return bytes(cell["bytes"])
        if cell.get("path"):
            with open(safe_join(base_dir, cell["path"]), "rb") as f:
                return f.read()
    raise ValueError(f"{where}: image cell has neither bytes nor a path")


def find_files(root: str, pattern: str) -> list[str]:
    """Sorted files under ``root`` (recursive) whose name matches the glob ``pattern``."""
    import fnmatch

    out = []
    for dirpath, _, names in os.walk(root):
        out.extend(os.path.join(dirpath, n) for n in names if fnmatch.fnmatch(n, pattern))
    return sorted(out)
