"""RefCOCOg builder from small files in the real schemas (parquet; refs pickle + COCO json)."""

import io
import json
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import common
from data_pipelines.refcocog import SegzeroRefcocog, coco_segmentation_to_mask, resize_area
from segzero_jax.masks import mask_to_prompt


def _jpeg(w, h, seed=0):
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _build(tmp_path, source, manual):
    from tensorflow_datasets.core import download

    builder = SegzeroRefcocog(data_dir=str(tmp_path / "tfds"), config=source)
    builder.download_and_prepare(download_config=download.DownloadConfig(manual_dir=str(manual)))
    return builder


def test_parquet_source(tmp_path):
    folder = tmp_path / "manual" / "refcocog_9k_840" / "data"
    folder.mkdir(parents=True)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({
        "id": ["a", "b", "c", "d"],
        "problem": ["the man in red", "left dog", "broken", "no solution"],
        "solution": ["<box>(10,20),(300,400)</box><points>(50,60),(70,80)</points>",
                     "<box>(1,2),(3,4)</box><points>(1,2),(3,3)</points>",
                     "<box>(1,2),(3,4)</box><points>(1,2),(3,3)</points>", None],
        "image": pa.array([{"bytes": _jpeg(840, 840, 1), "path": None}, {"bytes": _jpeg(840, 840, 2), "path": None},
                           {"bytes": b"garbage", "path": None}, {"bytes": _jpeg(840, 840, 3), "path": None}],
                          type=image_type),
        "img_height": [480, 427, 1, 1], "img_width": [640, 640, 1, 1],
    })
    pq.write_table(table, folder / "train-00000-of-00001.parquet")
    builder = _build(tmp_path, "parquet", tmp_path / "manual")
    source = builder.as_data_source("train")
    assert len(source) == 2  # corrupt image and missing solution skipped
    rec = {source[i]["image_id"].decode(): source[i] for i in range(2)}["a"]
    assert rec["question"].decode() == "the man in red"
    np.testing.assert_array_equal(rec["bbox"], [10, 20, 300, 400])
    np.testing.assert_array_equal(rec["points"], [[50, 60], [70, 80]])
    assert (rec["height"], rec["width"]) == (480, 640)
    assert rec["image"] == table["image"][0].as_py()["bytes"]


def _coco_manual(tmp_path, refs, pickle_protocol=2):
    manual = tmp_path / "manual"
    (manual / "refcocog").mkdir(parents=True)
    (manual / "train2014").mkdir()
    (manual / "train2014" / "COCO_train2014_1.jpg").write_bytes(_jpeg(64, 48, 1))
    (manual / "train2014" / "COCO_train2014_2.jpg").write_bytes(_jpeg(40, 80, 2))
    (tmp_path / "outside.jpg").write_bytes(_jpeg(40, 80, 3))
    m = np.zeros((80, 40), np.uint8)
    m[10:30, 5:25] = 1
    import pycocotools.mask as cocomask

    rle = cocomask.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode()
    instances = {
        "images": [{"id": 1, "file_name": "COCO_train2014_1.jpg", "height": 48, "width": 64},
                   {"id": 2, "file_name": "COCO_train2014_2.jpg", "height": 80, "width": 40},
                   {"id": 3, "file_name": "../outside.jpg", "height": 80, "width": 40}],
        "annotations": [{"id": 11, "image_id": 1, "segmentation": [[8, 8, 40, 8, 40, 30, 8, 30]]},
                        {"id": 12, "image_id": 2, "segmentation": rle},
                        {"id": 13, "image_id": 3, "segmentation": rle}],
    }
    (manual / "refcocog" / "instances.json").write_text(json.dumps(instances))
    with open(manual / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(refs, f, protocol=pickle_protocol)
    return manual, m


def _ref(ref_id, ann_id, image_id, split, raw):
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "sentences": [{"raw": raw, "sent": raw.lower()}, {"raw": "other", "sent": "other"}]}


def test_coco_source(tmp_path):
    refs = [_ref(1, 11, 1, "train", " The Box on the left. "), _ref(2, 12, 2, "val", "Square?"),
            _ref(3, 13, 3, "train", "escapes the image folder"), _ref(4, 99, 1, "train", "no such annotation")]
    manual, m = _coco_manual(tmp_path, refs)
    builder = _build(tmp_path, "coco", manual)
    train = builder.as_data_source("train")
    assert len(train) == 1
    rec = train[0]
    # The raw sentence, as the published set's `problem` (the prompt normalises it).
    assert rec["question"].decode() == " The Box on the left. "
    assert (rec["height"], rec["width"]) == (48, 64)
    stored = Image.open(io.BytesIO(rec["image"]))
    assert stored.size == (840, 840) and stored.format == "PNG"  # lossless, as the published set
    with open(os.path.join(manual, "train2014", "COCO_train2014_1.jpg"), "rb") as f:
        _, original = common.load_image(f.read(), "original")
    np.testing.assert_array_equal(np.asarray(stored), resize_area(original, 840))
    # Polygon (8,8)-(40,30) on 64x48 covers pixels 8..39 x 8..29 (pycocotools, as Seg-Zero);
    # the bbox is the first and last mask pixel, mapped with int(v * 840 / size + 0.5).
    np.testing.assert_array_equal(rec["bbox"], [int(8 * 840 / 64 + .5), int(8 * 840 / 48 + .5),
                                                int(39 * 840 / 64 + .5), int(29 * 840 / 48 + .5)])
    val = builder.as_data_source("validation")
    assert len(val) == 1 and val[0]["question"].decode() == "Square?"
    prompt = mask_to_prompt(m)
    np.testing.assert_array_equal(val[0]["bbox"], np.floor(prompt.bbox * np.array([21, 10.5, 21, 10.5]) + .5))
    np.testing.assert_array_equal(val[0]["points"], np.floor(prompt.points * np.array([21, 10.5]) + .5))


def test_resize_area_averages_pixel_areas():
    # Enlarging 2 -> 3 px: the middle output pixel straddles both inputs (PIL's BOX filter gives
    # the nearest one); shrinking 3 -> 2 px: each output averages 1.5 input pixels.
    row = np.array([[[0], [200]]], np.uint8)
    np.testing.assert_array_equal(resize_area(np.repeat(row, 2, axis=0), 3)[:, :, 0], [[0, 100, 200]] * 3)
    row = np.array([[[0], [100], [255]]], np.uint8)
    np.testing.assert_array_equal(resize_area(np.repeat(row, 3, axis=0), 2)[:, :, 0], [[33, 203]] * 2)


def test_segmentation_decoding():
    """pycocotools decodes (as Seg-Zero's preparation); the glue handles the three COCO forms,
    unites an annotation's polygons and names damaged input."""
    from pycocotools import mask as cocomask
    rng = np.random.default_rng(0)
    m = (rng.random((37, 53)) > 0.7).astype(np.uint8)
    rle = cocomask.encode(np.asfortranarray(m))
    np.testing.assert_array_equal(coco_segmentation_to_mask(rle, 37, 53), m.astype(bool))
    as_text = {"size": [37, 53], "counts": rle["counts"].decode()}        # as json.load gives it
    np.testing.assert_array_equal(coco_segmentation_to_mask(as_text, 37, 53), m.astype(bool))
    uncompressed = {"size": [37, 53], "counts": []}                      # COCO's crowd form
    flat, run, value = m.T.ravel(), 0, 0                                 # runs in column-major order
    for v in flat:
        if v != value:
            uncompressed["counts"].append(run)
            run, value = 0, v
        run += 1
    uncompressed["counts"].append(run)
    np.testing.assert_array_equal(coco_segmentation_to_mask(uncompressed, 37, 53), m.astype(bool))
    no_size = {"counts": uncompressed["counts"]}                         # size taken from the image
    np.testing.assert_array_equal(coco_segmentation_to_mask(no_size, 37, 53), m.astype(bool))
    # A 10 x 6 rectangle covers 60 pixels; two overlapping ones 60 + 50 - 15.
    one = coco_segmentation_to_mask([[10, 2, 20, 2, 20, 8, 10, 8]], 12, 30)
    assert one.sum() == 60 and one[2:8, 10:20].all()
    two = coco_segmentation_to_mask([[10, 2, 20, 2, 20, 8, 10, 8], [15, 5, 25, 5, 25, 10, 15, 10]], 12, 30)
    assert two.sum() == 95 and two.dtype == bool
    for bad, message in [([[1, 2, 3, 4]], "at least 3 \\(x, y\\) vertices"), ([], "no polygons"),
                         ([[1, 2, 3, 4, 5, 6, 7]], "at least 3 \\(x, y\\) vertices"),
                         ([[0, 0, 1e9, 0, 1e9, 1e9]], "far outside"),         # segfaults pycocotools
                         ([[0, 0, float("nan"), 0, 5, 5]], "not finite"),      # segfaults pycocotools
                         ([[0, 0, "a", 0, 5, 5]], "could not convert"),
                         ({"size": [30, 53], "counts": rle["counts"]}, "differs from the image"),
                         ({"size": 5, "counts": rle["counts"]}, r"size must be \[height, width\]"),
                         ({"size": [37, 53], "counts": [5, 10]}, "integers covering 1961 pixels"),
                         ({"size": [37, 53], "counts": [5.0, 1956]}, "integers covering"),
                         ({"size": [37, 53], "counts": rle["counts"][:-5]}, "damaged"),
                         ({"size": [37, 53], "counts": b"zzzz"}, "damaged"),
                         ("polygon", "unsupported segmentation")]:
        with pytest.raises(ValueError, match=message):
            coco_segmentation_to_mask(bad, 37, 53)


def test_refs_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    manual, _ = _coco_manual(tmp_path, [Evil()])
    with pytest.raises(ValueError, match="refusing to load"):
        _build(tmp_path, "coco", manual)
    path = tmp_path / "ok.p"
    path.write_bytes(pickle.dumps([{"a": (1, 2.5, None, b"x", {3})}], protocol=0))
    assert common.load_data_pickle(str(path)) == [{"a": (1, 2.5, None, b"x", {3})}]
    # A Python 2 pickle (protocol 2, byte strings as SHORT_BINSTRING), like the released refs file.
    path.write_bytes(b"\x80\x02]q\x00}q\x01(U\x03rawq\x02U\x05Helloq\x03U\x05splitq\x04U\x03valq\x05ua.")
    assert common.load_data_pickle(str(path)) == [{"raw": "Hello", "split": "val"}]


def test_missing_manual_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="is missing or empty.*refcocog_9k_840"):
        _build(tmp_path, "parquet", tmp_path / "nowhere")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "readme.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"refcocog_9k_840/train-\*\.parquet"):
        _build(tmp_path, "parquet", tmp_path / "m")
    with pytest.raises(FileNotFoundError, match=r"refs\(umd\)\.p"):
        _build(tmp_path, "coco", tmp_path / "m")
