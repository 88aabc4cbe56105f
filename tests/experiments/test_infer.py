"""experiments.infer on tiny random models: the outputs, and one-line errors for bad inputs."""

import numpy as np
import pytest
from PIL import Image

from experiments import infer
from segzero_jax.evaluation import generation
from tests.experiments import tiny_models
from tests.experiments.scripts import run_module

ANSWER = ('<think>the left half</think><answer>{"bbox": [0,0,420,840], '
          '"points_1": [200,400], "points_2": [100,700]}</answer>')


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_models.write_models(str(tmp_path_factory.mktemp("infer")))


class FixedAnswer:
    """Stands in for the greedy generator (a random policy never answers in Seg-Zero's format)."""

    def __init__(self, policy_config, tokenizer, **kw):
        pass

    def __call__(self, params, batch):
        return [generation.Response(ANSWER, 30, True)]


@pytest.mark.slow
def test_writes_the_mask_and_overlay_at_the_image_size(models, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generation, "GreedyGenerator", FixedAnswer)
    image = tiny_models.image_file(str(tmp_path / "photo.png"), size=(48, 64))
    out = infer.run(infer.Options(checkpoint=models, image=image, question="the left half",
                                  out=str(tmp_path / "res" / "photo")))
    printed = capsys.readouterr().out
    assert "reasoning: the left half" in printed and "bbox: [0, 0, 32, 48]" in printed
    assert out["bbox"] == [0, 0, 32, 48] and out["points"] == [[15, 23], [8, 40]]  # round(int(v) * 64/840 ...)
    mask = np.asarray(Image.open(out["mask"]))
    overlay = np.asarray(Image.open(out["overlay"]))
    assert mask.shape == (48, 64) and overlay.shape == (48, 64, 3)
    assert set(np.unique(mask)) <= {0, 255} and int((mask == 255).sum()) == out["mask_pixels"]
    assert out["error"] is None and out["score"] is not None


@pytest.mark.slow
def test_the_real_generator_path_reports_an_unparsable_answer(models, tmp_path, capsys):
    image = tiny_models.image_file(str(tmp_path / "photo.png"))
    out = infer.run(infer.Options(checkpoint=models, image=image, question="the cat", out=f"{tmp_path}/p",
                                  image_size=56, max_new_tokens=4))
    assert out["error"].startswith("the answer could not be parsed") and out["mask_pixels"] == 0
    assert np.asarray(Image.open(out["mask"])).shape == (48, 64)
    assert "no mask: the answer could not be parsed" in capsys.readouterr().out


def test_bad_inputs_are_one_line(models, tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    image = tiny_models.image_file(str(tmp_path / "ok.png"))
    proc = run_module("experiments.infer", f"--checkpoint={models}", f"--image={tmp_path}/bad.jpg",
                      "--question=x", f"--out={tmp_path}/o", timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: cannot read image {tmp_path}/bad.jpg: ")
    run = lambda **kw: infer.run(infer.Options(**{"checkpoint": models, "image": image, "question": "x",
                                                  "out": f"{tmp_path}/o", **kw}))
    with pytest.raises(infer.InputError, match=f"cannot read image {tmp_path}/absent.png: No such file"):
        run(image=f"{tmp_path}/absent.png")
    with pytest.raises(infer.InputError, match=f"no checkpoint at {tmp_path}/nothing"):
        run(checkpoint=f"{tmp_path}/nothing")
    with pytest.raises(infer.InputError, match="--question is required"):
        run(question="")
    assert not (tmp_path / "o_mask.png").exists()
