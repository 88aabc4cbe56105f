"""ReasonSeg builder from small files in the real schemas (LISA labelme JSON; Seg-Zero parquet)."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines.reasonseg import SegzeroReasonseg, labelme_masks
from segzero_jax.masks import mask_to_prompt


def _jpeg(w, h, seed=0):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _rect(x1, y1, x2, y2):
    return [[x1, y1], [x2, y1], [x2, y2], [x1, y2]]


def _build(tmp_path, source, manual):
    from tensorflow_datasets.core import download

    builder = SegzeroReasonseg(data_dir=str(tmp_path / "tfds"), config=source)
    builder.download_and_prepare(download_config=download.DownloadConfig(manual_dir=str(manual)))
    return builder


def test_labelme_masks_follow_area_order():
    shapes = [
        {"label": "target", "points": _rect(10, 10, 50, 40), "shape_type": "polygon"},
        {"label": "ignore", "points": _rect(20, 20, 30, 30), "shape_type": "polygon"},  # smaller: painted on top
        {"label": "Ignore", "points": _rect(55, 5, 79, 45), "shape_type": "polygon"},
        {"label": "target", "points": _rect(60, 10, 65, 15), "shape_type": "polygon"},  # inside the ignore
        {"label": "flag", "points": _rect(0, 0, 79, 49), "shape_type": "polygon"},  # deprecated: dropped
    ]
    mask, ignore = labelme_masks(shapes, 50, 80)
    assert mask[15, 15] and not mask[25, 25] and ignore[25, 25]
    assert mask[12, 62] and not ignore[12, 62] and ignore[40, 70]
    assert not mask[0, 0] and not ignore[0, 0]
    assert not (mask & ignore).any()
    assert mask[10:41, 10:51].sum() == 31 * 41 - 11 * 11


def test_labelme_polygons_are_drawn_with_their_outline_and_integer_vertices():
    # OpenCV (LISA's and Seg-Zero's mask code) truncates vertices to int32 and draws the
    # closed outline over the fill; the whole top edge (1,1)-(12,2) belongs to the mask
    # (cv2.polylines + cv2.fillPoly give exactly these rows).
    mask, _ = labelme_masks([{"label": "target", "points": [[1.9, 1.7], [12.99, 2.2], [6.5, 10.9]]}], 12, 15)
    np.testing.assert_array_equal(np.flatnonzero(mask[1]), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(np.flatnonzero(mask[2]), np.arange(2, 13))
    np.testing.assert_array_equal(np.flatnonzero(mask[5]), np.arange(3, 11))
    np.testing.assert_array_equal(np.flatnonzero(mask[10]), [6])
    assert mask.sum() == 61 and not mask[11].any() and not mask[0].any()


def test_damaged_polygons_are_named():
    for points, message in [([[0, 0], [5, 5]], "at least 3 \\(x, y\\) vertices"),
                            ([[0, 0], [float("nan"), 0], [5, 5]], "not finite"),
                            ([[0, 0], [1e30, 0], [5, 5]], "far outside"),
                            ([[0, 0, 1], [1, 1, 1], [2, 2, 2]], "array of shape \\(3, 3\\)")]:
        with pytest.raises(ValueError, match=message):  # NaN once drew a wrong mask silently
            labelme_masks([{"label": "target", "points": points}], 40, 50)


def test_labelme_masks_equal_lisa_procedure():
    """Random scenes of target / ignore / flag polygons against LISA's `get_mask_from_json`
    procedure written out with OpenCV: pixel for pixel."""
    import cv2
    rng = np.random.default_rng(0)
    height, width = 120, 160
    for _ in range(40):
        shapes = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(3, 12))
            centre, radius = rng.uniform([10, 10], [width - 10, height - 10]), rng.uniform(3, 60)
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            offsets = np.stack([np.cos(angles), np.sin(angles)], 1)
            points = centre + radius * rng.uniform(0.3, 1, (n, 1)) * offsets
            shapes.append({"label": str(rng.choice(["target", "ignore", "flag"])), "points": points.tolist()})
        kept = [s for s in shapes if s["label"] != "flag"]
        areas = []
        for shape in kept:
            tmp = np.zeros((height, width), np.uint8)
            cv2.polylines(tmp, np.array([shape["points"]], dtype=np.int32), True, 1, 1)
            cv2.fillPoly(tmp, np.array([shape["points"]], dtype=np.int32), 1)
            areas.append(tmp.sum())
        ref = np.zeros((height, width), np.uint8)
        for i in np.argsort(areas)[::-1]:
            value = 255 if "ignore" in kept[i]["label"] else 1
            cv2.polylines(ref, np.array([kept[i]["points"]], dtype=np.int32), True, value, 1)
            cv2.fillPoly(ref, np.array([kept[i]["points"]], dtype=np.int32), value)
        mask, ignore = labelme_masks(shapes, height, width)
        np.testing.assert_array_equal(mask, ref == 1)
        np.testing.assert_array_equal(ignore, ref == 255)


def test_json_source(tmp_path):
    val = tmp_path / "manual" / "ReasonSeg" / "val"
    val.mkdir(parents=True)
    (val / "img1.jpg").write_bytes(_jpeg(80, 50, 1))
    (val / "img1.json").write_text(json.dumps({
        "text": ["What could hold the water?", "the cup."], "is_sentence": True,
        "shapes": [{"label": "target", "points": _rect(10, 10, 50, 40)},
                   {"label": "ignore", "points": _rect(20, 20, 30, 30)}]}))
    (val / "img2.jpg").write_bytes(b"not a jpeg")
    (val / "img2.json").write_text(json.dumps({"text": ["x"], "is_sentence": False,
                                               "shapes": [{"label": "target", "points": _rect(1, 1, 5, 5)}]}))
    (val / "img3.jpg").write_bytes(_jpeg(30, 30, 3))
    (val / "img3.json").write_text(json.dumps({"text": ["only ignore"], "is_sentence": False,
                                               "shapes": [{"label": "ignore", "points": _rect(1, 1, 5, 5)}]}))
    (val / "img4.jpg").write_bytes(_jpeg(30, 30, 4))
    (val / "img4.json").write_text("{broken")
    (val / "img5.jpg").write_bytes(_jpeg(30, 30, 5))
    (val / "img5.json").write_text(json.dumps({"is_sentence": False, "shapes": []}))  # missing text
    builder = _build(tmp_path, "json", tmp_path / "manual")
    source = builder.as_data_source("validation")
    # two questions of img1 and img3 (only an ignore region: Seg-Zero's export keeps it); the
    # three broken files are skipped
    assert len(source) == 3
    by_image = {}
    for i in range(3):
        by_image.setdefault(source[i]["image_id"].decode(), []).append(source[i])
    (only_ignore,) = by_image["img3"]
    assert not only_ignore["mask"].any() and only_ignore["ignore_mask"].any()
    np.testing.assert_array_equal(only_ignore["bbox"], [1, 1, 5, 5])
    recs = sorted(by_image["img1"], key=lambda r: r["question_index"])
    assert [r["question"].decode() for r in recs] == ["What could hold the water?", "the cup."]
    rec = recs[0]
    assert rec["image"] == (val / "img1.jpg").read_bytes()
    assert (rec["height"], rec["width"]) == (50, 80) and rec["image_id"].decode() == "img1"
    assert rec["mask"].shape == (50, 80) and rec["ignore_mask"][25, 25] and not rec["mask"][25, 25]
    prompt = mask_to_prompt(rec["mask"])
    np.testing.assert_array_equal(rec["bbox"], [10, 10, 50, 40])
    np.testing.assert_array_equal(rec["points"], prompt.points)
    assert bool(rec["is_sentence"])


def test_parquet_source(tmp_path):
    folder = tmp_path / "manual" / "reasonseg_test" / "data"
    folder.mkdir(parents=True)
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "image": pa.array([{"bytes": _jpeg(40, 30, 1), "path": None}, {"bytes": _jpeg(40, 30, 2), "path": None},
                           {"bytes": None, "path": "../../../etc/passwd"}], type=image_type),
        "mask": [mask.tolist(), np.zeros((30, 40), bool).tolist(), mask.tolist()],
        "text": ["the thing that can be opened", "empty mask", "escaping path"],
        "image_id": ["a", "b", "c"], "ann_id": ["a1", "b1", "c1"], "img_height": [30, 30, 30],
        "img_width": [40, 40, 40],
    })
    pq.write_table(table, folder / "test-00000-of-00001.parquet")
    builder = _build(tmp_path, "parquet", tmp_path / "manual")
    assert list(builder.info.splits.keys()) == ["test"]
    source = builder.as_data_source("test")
    assert len(source) == 1
    rec = source[0]
    np.testing.assert_array_equal(rec["mask"], mask)
    assert not rec["ignore_mask"].any()
    np.testing.assert_array_equal(rec["bbox"], [10, 5, 29, 19])
    assert rec["ann_id"].decode() == "a1"


def test_missing_manual_files_name_the_file(tmp_path):
    manual = tmp_path / "m"
    manual.mkdir()
    (manual / "README").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"ReasonSeg/val/<name>\.json"):
        _build(tmp_path, "json", manual)
    with pytest.raises(FileNotFoundError, match=r"reasonseg_val/\*\.parquet"):
        _build(tmp_path, "parquet", manual)
