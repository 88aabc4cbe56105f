"""experiments.demo through Gradio's own client: upload an image, ask, read the reasoning and overlay.
Needs gradio (an optional extra); skipped without it."""

import os

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from PIL import Image  # noqa: E402

from experiments import demo, infer  # noqa: E402
from segzero_jax.evaluation import generation  # noqa: E402
from segzero_jax.inference import render_overlay  # noqa: E402
from tests.experiments import tiny_models  # noqa: E402
from tests.experiments.test_infer import ANSWER, FixedAnswer  # noqa: E402


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    import portpicker

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    root = tmp_path_factory.mktemp("demo")
    models = tiny_models.write_models(str(root / "models"))
    mp = pytest.MonkeyPatch()
    mp.setattr(generation, "GreedyGenerator", FixedAnswer)
    pipeline = infer.build_pipeline(models)
    mp.undo()
    app = demo.make_app(pipeline)
    app.launch(server_name="127.0.0.1", server_port=portpicker.pick_unused_port(), prevent_thread_lock=True,
               quiet=True)
    yield app, root, pipeline
    app.close()


@pytest.mark.slow
def test_the_page_answers_through_the_client(page):
    app, root, pipeline = page
    image = tiny_models.image_file(str(root / "photo.png"), size=(48, 64))
    client = gradio_client.Client(app.local_url, verbose=False)
    reasoning, overlay_file, details = client.predict(gradio_client.handle_file(image), "the left half",
                                                      api_name="/segment")
    assert reasoning == "the left half"
    assert details["bbox"] == [0, 0, 32, 48] and details["error"] is None and details["response"] == ANSWER
    overlay = np.asarray(Image.open(overlay_file).convert("RGB"))
    source = np.asarray(Image.open(image).convert("RGB"))
    pred = pipeline(source, "the left half")  # the inference path, called directly
    np.testing.assert_array_equal(overlay, np.asarray(render_overlay(source, pred.mask, pred.bbox, pred.points)))
    assert details["mask_pixels"] == int(pred.mask.sum()) and (overlay != source).any()


def test_missing_inputs_are_errors_on_the_page(page):
    app, root, _ = page
    client = gradio_client.Client(app.local_url, verbose=False)
    image = tiny_models.image_file(str(root / "photo2.png"))
    with pytest.raises(Exception, match="type a question"):
        client.predict(gradio_client.handle_file(image), "  ", api_name="/segment")
