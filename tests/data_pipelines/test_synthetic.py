"""Synthetic scenes and their TFDS builder (ArrayRecord, no TensorFlow)."""

import io
import sys

import numpy as np
import pytest
from PIL import Image

from data_pipelines import synthetic_scenes as S
from data_pipelines.synthetic import SegzeroSynthetic, synthetic_config
from segzero_jax.masks import mask_to_prompt


def test_examples_are_deterministic_and_consistent():
    a = S.generate_example(3, "train", 5)
    b = S.generate_example(3, "train", 5)
    assert S.fingerprint(a) == S.fingerprint(b)
    assert S.fingerprint(a) != S.fingerprint(S.generate_example(4, "train", 5))
    image = np.asarray(Image.open(io.BytesIO(a["image"])))
    assert image.shape == (112, 112, 3) and a["mask"].shape == (112, 112)
    prompt = mask_to_prompt(a["mask"])
    np.testing.assert_array_equal(a["bbox"], prompt.bbox)
    np.testing.assert_array_equal(a["points"], prompt.points)
    # The target's pixels carry its colour.
    colour = S.COLOURS[a["target"].split()[0]]
    assert (image[a["mask"]] == colour).all()


def test_question_types_are_balanced_and_resolve_to_the_target():
    kinds = [S.generate_example(0, "train", i, 96)["question_type"] for i in range(16)]
    assert sorted(set(kinds)) == sorted(S.QUESTION_TYPES)
    ex = S.generate_example(0, "train", 3)  # index 3 -> function question
    assert ex["question"].startswith("what you would use to ")
    shape = ex["target"].split()[1]
    assert ex["question"].endswith(S.FUNCTIONS[shape])


def test_held_out_compositions():
    held = {p for pairs in S.HELD_OUT.values() for p in pairs}
    train_targets = {tuple(S.generate_example(0, "train", i, 96)["target"].split()) for i in range(60)}
    assert not train_targets & held
    for split in ("validation", "test"):
        targets = {tuple(S.generate_example(0, split, i, 96)["target"].split()) for i in range(12)}
        assert targets <= set(S.HELD_OUT[split])
    # No held-out pair is ever drawn into a train scene, even as a distractor.
    assert not any(S._allowed("train", c, s) for c, s in held)
    assert not any(S._allowed("validation", c, s) for c, s in S.HELD_OUT["test"])


def test_questions_of_a_handmade_scene():
    O = S.SceneObject
    scene = [O("circle", "red", 20, 50, 8), O("square", "blue", 50, 50, 10), O("circle", "green", 85, 50, 14),
             O("triangle", "red", 50, 15, 6)]
    image, masks = S.render(scene, 112, (255, 255, 255))
    qs = {(kind, text): i for kind, text, i in S._questions(scene, masks, None)}
    assert qs[("relation", "the circle left of the blue square")] == 0
    assert qs[("relation", "the circle right of the blue square")] == 2
    assert qs[("superlative", "the largest circle")] == 2
    assert qs[("superlative", "the smallest circle")] == 0
    assert qs[("superlative", "the smallest red object")] == 3
    assert qs[("function", f"what you would use to {S.FUNCTIONS['square']}")] == 1
    assert qs[("attribute", "the green circle")] == 2
    # Not unique -> never asked.
    assert not any(text == f"what you would use to {S.FUNCTIONS['circle']}" for _, text in qs)
    assert not any("above the" in text and text.startswith("the circle") for _, text in qs)
    # Masks are the drawn pixels: disjoint and coloured.
    assert not (masks[0] & masks[2]).any()
    assert (image[masks[1]] == S.COLOURS["blue"]).all()


def test_bad_split_and_config():
    with pytest.raises(ValueError, match="unknown split"):
        S.generate_example(0, "dev", 0)
    with pytest.raises(ValueError, match="num_train must be positive"):
        synthetic_config(num_train=0)
    with pytest.raises(ValueError, match="image_size"):
        synthetic_config(image_size=16)


def test_builder_writes_array_record_and_reads_back_without_tensorflow(tmp_path):
    cfg = synthetic_config(image_size=64, num_train=12, num_validation=4, num_test=5, seed=7)
    builder = SegzeroSynthetic(data_dir=str(tmp_path), config=cfg)
    builder.download_and_prepare()
    assert "tensorflow" not in sys.modules
    files = sorted(p.name for p in tmp_path.rglob("*.array_record*"))
    assert len(files) == 3, files
    train = builder.as_data_source("train")
    assert len(train) == 12 and len(builder.as_data_source("test")) == 5
    got = {train[i]["image_id"].decode(): train[i] for i in range(12)}
    for i in range(12):
        ref = S.generate_example(7, "train", i, 64)
        rec = got[ref["image_id"]]
        assert rec["image"] == ref["image"] and rec["question"].decode() == ref["question"]
        np.testing.assert_array_equal(rec["mask"], ref["mask"])
        np.testing.assert_array_equal(rec["bbox"], ref["bbox"])
        np.testing.assert_array_equal(rec["points"], ref["points"])
        assert rec["height"] == rec["width"] == 64
    # The default config is reachable by an equal config object (no name clash).
    SegzeroSynthetic(data_dir=str(tmp_path), config=synthetic_config())
