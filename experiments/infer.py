r"""Segments what a question refers to in one image: the policy's reasoning, box and points, SAM2's mask.

  python -m experiments.infer --checkpoint=ckpt/seg_zero_init --image=photo.jpg \
      --question="the object used to cut paper" --out=out/photo

prints the reasoning, the box and the two points on the original image, and writes
``PREFIX_mask.png`` (the image's size, 255 on the mask) and ``PREFIX_overlay.png`` (the mask
tinted red, the box in green, the points in yellow). The last line printed is the same as JSON.
An answer that cannot be parsed is reported (with the raw response) and gives an empty mask.
`--checkpoint` and `--sam2` take what `experiments.evaluate` takes (`experiments.model_loading`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

from absl import app, flags


@dataclasses.dataclass
class Options:
    """The command's settings (its flags, same names and defaults)."""

    checkpoint: Optional[str] = None
    image: Optional[str] = None
    question: Optional[str] = None
    out: Optional[str] = None
    sam2: Optional[str] = None
    sam2_preset: Optional[str] = None
    step: Optional[str] = None
    image_size: int = 840
    max_new_tokens: int = 1024
    parser: str = "segzero"


def define_flags() -> None:
    d = Options()
    flags.DEFINE_string("checkpoint", d.checkpoint, "Model directory, experiments.convert output or training "
                        "workdir.")
    flags.DEFINE_string("image", d.image, "Image file (any format PIL reads).")
    flags.DEFINE_string("question", d.question, "What to segment, e.g. 'the object used to cut paper'.")
    flags.DEFINE_string("out", d.out, "Output prefix: writes PREFIX_mask.png and PREFIX_overlay.png.")
    flags.DEFINE_string("sam2", d.sam2, "SAM2 model directory or Meta's .pt (overrides the checkpoint's).")
    flags.DEFINE_string("sam2_preset", d.sam2_preset, "Preset of a Meta .pt (default: inferred from the file).")
    flags.DEFINE_string("step", d.step, "With a training workdir: latest, best or a step number.")
    flags.DEFINE_integer("image_size", d.image_size, "Side of the square frame the policy sees.")
    flags.DEFINE_integer("max_new_tokens", d.max_new_tokens, "Generation budget.")
    flags.DEFINE_enum("parser", d.parser, ["segzero", "lenient"], "Answer parser (segzero = the reference).")


class InputError(Exception):
    """A problem with the command's inputs, reported as one line."""


def read_image(path: str):
    """uint8[H, W, 3] of an image file; InputError naming the path when it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    from segzero_jax.inference import as_rgb_array
    try:
        with Image.open(path) as img:
            return as_rgb_array(img)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise InputError(f"cannot read image {path}: {reason}") from None


def build_pipeline(checkpoint: str, sam2: Optional[str] = None, sam2_preset: Optional[str] = None,
                   step: Optional[str] = None, image_size: int = 840, max_new_tokens: int = 1024,
                   parser: str = "segzero"):
    """A `SegZeroPipeline` restored from `checkpoint` (shared with the demo page)."""
    from experiments.model_loading import load_models
    from segzero_jax.inference import SegZeroPipeline
    from segzero_jax.segment import Segmenter

    if not os.path.exists(checkpoint):
        raise InputError(f"no checkpoint at {checkpoint}")
    models = load_models(checkpoint, sam2, sam2_preset, step)
    return SegZeroPipeline(models.policy_config, models.policy_params, models.tokenizer,
                           Segmenter(models.sam2_config, models.sam2_params, batch_size=1),
                           image_size=image_size, max_new_tokens=max_new_tokens, parser=parser)


def write_outputs(prefix: str, image, prediction) -> tuple[str, str]:
    """PREFIX_mask.png and PREFIX_overlay.png; returns their paths."""
    from segzero_jax.inference import render_mask, render_overlay

    parent = os.path.dirname(os.path.abspath(prefix))
    os.makedirs(parent, exist_ok=True)
    mask_path, overlay_path = f"{prefix}_mask.png", f"{prefix}_overlay.png"
    render_mask(prediction.mask).save(mask_path)
    render_overlay(image, prediction.mask, prediction.bbox, prediction.points).save(overlay_path)
    return mask_path, overlay_path


def summary(prediction, mask_path: str, overlay_path: str) -> dict:
    return {"think": prediction.think, "bbox": None if prediction.bbox is None else list(prediction.bbox),
            "points": None if prediction.points is None else [list(p) for p in prediction.points],
            "mask_pixels": int(prediction.mask.sum()), "score": prediction.score, "error": prediction.error,
            "response": prediction.response, "mask": mask_path, "overlay": overlay_path}


def run(o: Options) -> dict:
    for name in ("checkpoint", "image", "question", "out"):
        if not getattr(o, name):
            raise InputError(f"--{name} is required")
    image = read_image(o.image)
    pipeline = build_pipeline(o.checkpoint, o.sam2, o.sam2_preset, o.step, o.image_size, o.max_new_tokens,
                              o.parser)
    prediction = pipeline(image, o.question)
    mask_path, overlay_path = write_outputs(o.out, image, prediction)
    out = summary(prediction, mask_path, overlay_path)
    if prediction.error:
        print(f"no mask: {prediction.error}")
        print(f"response: {prediction.response}")
    else:
        print(f"reasoning: {prediction.think}")
        print(f"bbox: {out['bbox']}")
        print(f"points: {out['points']}")
        print(f"mask: {mask_path} ({out['mask_pixels']} pixels, SAM2 score {prediction.score:.3f})")
    print(f"overlay: {overlay_path}")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from segzero_jax.checkpoint import CheckpointError
    options = Options(**{field.name: flags.FLAGS[field.name].value for field in dataclasses.fields(Options)})
    try:
        out = run(options)
    except (InputError, FileNotFoundError, CheckpointError) as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(out, ensure_ascii=False))


if __name__ == "__main__":
    define_flags()
    app.run(main)
