r"""A small Gradio page over the inference path: upload an image, ask, see the reasoning and the mask.

  pip install gradio
  python -m experiments.demo --checkpoint=ckpt/seg_zero_init [--port=7860]

The page calls `experiments.infer`'s pipeline (the same restore, prompt, greedy answer, parser
and SAM2 prompt); its one endpoint, ``/segment`` (image, question) -> (reasoning, overlay,
answer JSON), is also reachable with `gradio_client`.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

from absl import app, flags


@dataclasses.dataclass
class Options:
    checkpoint: Optional[str] = None
    sam2: Optional[str] = None
    sam2_preset: Optional[str] = None
    step: Optional[str] = None
    image_size: int = 840
    max_new_tokens: int = 1024
    parser: str = "segzero"
    host: str = "127.0.0.1"
    port: int = 7860
    example_image: Optional[str] = None
    example_question: Optional[str] = None


def define_flags() -> None:
    d = Options()
    flags.DEFINE_string("checkpoint", d.checkpoint, "Model directory, experiments.convert output or training "
                        "workdir.")
    flags.DEFINE_string("sam2", d.sam2, "SAM2 model directory or Meta's .pt (overrides the checkpoint's).")
    flags.DEFINE_string("sam2_preset", d.sam2_preset, "Preset of a Meta .pt (default: inferred from the file).")
    flags.DEFINE_string("step", d.step, "With a training workdir: latest, best or a step number.")
    flags.DEFINE_integer("image_size", d.image_size, "Side of the square frame the policy sees.")
    flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Generation budget.")
    flags.DEFINE_enum("parser", d.parser, ["segzero", "lenient"], "Answer parser (segzero = the reference).")
    flags.DEFINE_string("host", d.host, "Address to serve on.")
    flags.DEFINE_integer("port", d.port, "Port to serve on.")
    flags.DEFINE_string("example_image", d.example_image, "Image the page opens with (answered on load).")
    flags.DEFINE_string("example_question", d.example_question, "Question the page opens with.")


def segment(pipeline, image, question: str):
    """(reasoning text, overlay uint8[H, W, 3], answer dict) for the page."""
    import numpy as np

    from segzero_jax.inference import render_overlay
    if image is None:
        raise ValueError("upload an image first")
    if not question or not question.strip():
        raise ValueError("type a question")
    prediction = pipeline(image, question)
    overlay = np.asarray(render_overlay(image, prediction.mask, prediction.bbox, prediction.points))
    details = {"bbox": None if prediction.bbox is None else list(prediction.bbox),
               "points": None if prediction.points is None else [list(p) for p in prediction.points],
               "score": prediction.score, "mask_pixels": int(prediction.mask.sum()), "error": prediction.error,
               "response": prediction.response}
    text = prediction.think if prediction.error is None else f"({prediction.error})\n{prediction.response}"
    return text, overlay, details


def make_app(pipeline, example: Optional[tuple[str, str]] = None):
    """The Gradio Blocks page over `pipeline` (a `segzero_jax.inference.SegZeroPipeline`); with
    `example` = (image path, question) the page opens with them filled in and answered."""
    import gradio as gr

    def run(image, question):
        try:
            return segment(pipeline, image, question)
        except ValueError as err:
            raise gr.Error(str(err)) from None

    with gr.Blocks(title="Seg-Zero (JAX)") as page:
        gr.Markdown("## Seg-Zero reasoning segmentation\nUpload an image and say what to segment: the policy "
                    "reasons, answers with a box and two points, and SAM2 turns them into a mask.")
        with gr.Row():
            image = gr.Image(type="numpy", image_mode="RGB", label="image",
                             value=example[0] if example else None)
            overlay = gr.Image(type="numpy", label="mask, box and points", interactive=False, format="png")
        question = gr.Textbox(label="question", placeholder="the object used to cut paper",
                              value=example[1] if example else "")
        button = gr.Button("Segment", variant="primary")
        reasoning = gr.Textbox(label="reasoning", lines=4, interactive=False)
        details = gr.JSON(label="answer")
        button.click(run, [image, question], [reasoning, overlay, details], api_name="segment")
        question.submit(run, [image, question], [reasoning, overlay, details], api_name=False)
        if example:
            page.load(run, [image, question], [reasoning, overlay, details], api_name=False)
    return page


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.infer import InputError, build_pipeline
    from segzero_jax.checkpoint import CheckpointError
    o = Options(**{field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(Options)})
    if not o.checkpoint:
        raise SystemExit("error: --checkpoint is required")
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SystemExit("error: the demo page needs gradio (pip install gradio)") from None
    try:
        pipeline = build_pipeline(o.checkpoint, o.sam2, o.sam2_preset, o.step, o.image_size, o.max_new_tokens,
                                  o.parser)
    except (InputError, FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    example = None
    if o.example_image:
        if not os.path.isfile(o.example_image):
            raise SystemExit(f"error: --example_image={o.example_image}: no such file")
        example = (o.example_image, o.example_question or "")
    make_app(pipeline, example).launch(server_name=o.host, server_port=o.port)


if __name__ == "__main__":
    define_flags()
    app.run(main)
