"""Images + questions -> one batch of Seg-Zero policy inputs (the sampler's batch format).

As Seg-Zero's evaluation builds them (and `data_pipelines.input_pipeline` for training): the
image resized to ``image_size`` x ``image_size`` with PIL bilinear, Qwen2.5-VL's patches of it,
the chat-templated Seg-Zero prompt with one ``<|image_pad|>`` per merged patch, left-padded::

    input_ids       int32[B, T]        T = the longest prompt rounded up to `length_multiple`
    attention_mask  int32[B, T]
    pixel_values    float32[B * N, 1176]
    image_grid_thw  int32[B, 3]        (numpy: the sampler reads it on the host)

A batch shorter than `batch_size` is padded with copies of its last prompt (``num_real`` says
how many rows are real), so every batch of a split has the same shapes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from segzero_jax.models.qwen2_5_vl import processor as P


def prompt_ids(tokenizer, question: str, grid: np.ndarray, image_processor: P.ImageProcessor) -> list[int]:
    """Token ids of the templated prompt with the image placeholder expanded."""
    text = P.apply_chat_template(P.segzero_messages(question), add_generation_prompt=True)
    (pad_id,) = tokenizer.encode(P.IMAGE_PAD)
    n_image = image_processor.num_image_tokens(grid)
    ids: list[int] = []
    for token in tokenizer.encode(text):
        ids.extend([token] * n_image if token == pad_id else [token])
    return ids


def policy_batch(images: Sequence[np.ndarray], questions: Sequence[str], tokenizer, *,
                 image_size: int = P.SEGZERO_IMAGE_SIZE, batch_size: int | None = None,
                 length_multiple: int = 64,
                 image_processor: P.ImageProcessor = P.ImageProcessor(min_pixels=P.RELEASED_MIN_PIXELS,
                                                                      max_pixels=P.RELEASED_MAX_PIXELS)) -> dict:
    """The batch of module docstring, plus ``num_real`` (int)."""
    if len(images) != len(questions) or not images:
        raise ValueError(f"{len(images)} images and {len(questions)} questions: need as many, at least one")
    batch_size = len(images) if batch_size is None else int(batch_size)
    if len(images) > batch_size:
        raise ValueError(f"{len(images)} prompts do not fit batch_size={batch_size}")
    rows, patches, grids = [], [], []
    for image, question in zip(images, questions):
        pixels, grid = image_processor.process(P.resize_for_policy(image, image_size))
        rows.append(prompt_ids(tokenizer, question, grid, image_processor))
        patches.append(pixels)
        grids.append(grid)
    num_real = len(rows)
    for _ in range(batch_size - num_real):
        rows.append(rows[-1])
        patches.append(patches[-1])
        grids.append(grids[-1])
    length = -(-max(len(r) for r in rows) // length_multiple) * length_multiple
    ids, mask = zip(*(P.left_pad(r, length, tokenizer.pad_id) for r in rows))
    return {
        "input_ids": np.stack(ids).astype(np.int32),
        "attention_mask": np.stack(mask).astype(np.int32),
        "pixel_values": np.concatenate(patches, axis=0).astype(np.float32),
        "image_grid_thw": np.stack(grids).astype(np.int32),
        "num_real": num_real,
    }
