"""Qwen2.5-VL input processing (numpy + PIL only) and the Seg-Zero prompt.

Image side, as transformers' ``Qwen2VLImageProcessor`` (PIL backend): convert to RGB (alpha
composited onto white), ``smart_resize`` both sides to multiples of ``patch_size * merge_size``
(28) with the pixel count kept in ``[min_pixels, max_pixels]``, bicubic PIL resize, rescale by
1/255, normalise with the CLIP mean/std, then cut into patches::

    pixel_values float32[N, C * temporal_patch_size * patch * patch] = [N, 1176]
    image_grid_thw int64[n_images, 3] = (1, H / 14, W / 14)

with patches ordered so that each 2x2 group of neighbouring patches (one merged LLM token) is
contiguous. The text side holds one ``<|image_pad|>`` per merged token: ``t * h * w / 4``.

Seg-Zero side: the policy sees the image resized to 840x840 with PIL bilinear; coordinates in
the answer live on that frame and map back to the original image with ``round(int(v) * f)``,
``f = original / 840`` (the reference inference code); ground truth maps onto the frame with
``int(v * 840 / original + 0.5)`` (the reference data preparation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
MIN_PIXELS = 56 * 56
MAX_PIXELS = 28 * 28 * 1280
# The released Qwen2.5-VL checkpoints' preprocessor_config.json (and Seg-Zero's training config,
# data.min_pixels / data.max_pixels) use these instead of the class defaults above.
RELEASED_MIN_PIXELS = 4 * 28 * 28
RELEASED_MAX_PIXELS = 16384 * 28 * 28
SEGZERO_IMAGE_SIZE = 840

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

SEGZERO_QUESTION_TEMPLATE = (
    "Please find '{Question}' with bbox and points."
    "Compare the difference between objects and find the most closely matched one."
    "Output the thinking process in <think> </think> and final answer in <answer> </answer> tags."
    "Output the one bbox and points of two largest inscribed circles inside the interested object in JSON format."
    "i.e., <think> thinking process here </think>"
    "<answer>{Answer}</answer>"
)
SEGZERO_EXAMPLE_ANSWER = "{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}"


# ----------------------------------------------------------------------------- image processing


def smart_resize(
    height: int,
    width: int,
    factor: int = PATCH_SIZE * MERGE_SIZE,
    min_pixels: int = MIN_PIXELS,
    max_pixels: int = MAX_PIXELS,
) -> tuple[int, int]:
    """(height, width) rounded to multiples of ``factor`` with ``min_pixels <= h * w <= max_pixels``."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """RGB PIL image; transparency is composited onto a white background. Arrays are [H, W(, C)] uint8."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"image array must be uint8 [H, W] or [H, W, C], got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


@dataclasses.dataclass(frozen=True)
class ImageProcessor:
    """Qwen2.5-VL image preprocessing; defaults are transformers' ``Qwen2VLImageProcessor`` class
    defaults (max 1280 merged tokens). The released checkpoints and Seg-Zero use
    ``RELEASED_MIN_PIXELS`` / ``RELEASED_MAX_PIXELS``; the two agree while an image needs at
    most 1280 merged tokens (Seg-Zero's 840x840 needs 900)."""

    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    patch_size: int = PATCH_SIZE
    merge_size: int = MERGE_SIZE
    temporal_patch_size: int = TEMPORAL_PATCH_SIZE
    image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    image_std: tuple[float, float, float] = OPENAI_CLIP_STD

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size * self.patch_size

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)

    def patchify(self, pixels: np.ndarray) -> np.ndarray:
        """float32[C, H, W] -> float32[H/p * W/p, C * t * p * p], merge groups contiguous."""
        c, h, w = pixels.shape
        p, m, t = self.patch_size, self.merge_size, self.temporal_patch_size
        gh, gw = h // p, w // p
        x = pixels.reshape(c, gh // m, m, p, gw // m, m, p)
        x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
        x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], t, p, p))
        return np.ascontiguousarray(x.reshape(gh * gw, c * t * p * p), dtype=np.float32)

    def process(self, image: Image.Image | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (pixel_values float32[N, 1176], image_grid_thw int64[3])."""
        image = to_rgb(image)
        height, width = self.resized_size(image.height, image.width)
        if (height, width) != (image.height, image.width):
            image = image.resize((width, height), resample=Image.Resampling.BICUBIC)
        pixels = np.asarray(image, dtype=np.float64) * (1.0 / 255.0)
        pixels = pixels.astype(np.float32)
        mean = np.asarray(self.image_mean, np.float32)
        std = np.asarray(self.image_std, np.float32)
        pixels = ((pixels - mean) / std).transpose(2, 0, 1)
        patches = self.patchify(pixels)
        grid = np.array([1, height // self.patch_size, width // self.patch_size], dtype=np.int64)
        return patches, grid

    def __call__(self, images: Iterable[Image.Image | np.ndarray]) -> dict[str, np.ndarray]:
        """Several images -> {"pixel_values": float32[sum N, 1176], "image_grid_thw": int64[n, 3]}."""
        patches, grids = zip(*(self.process(image) for image in images))
        return {"pixel_values": np.concatenate(patches, axis=0), "image_grid_thw": np.stack(grids)}

    def num_image_tokens(self, image_grid_thw: Sequence[int] | np.ndarray) -> int:
        """Number of ``<|image_pad|>`` tokens (merged patches) for one image's (t, h, w)."""
        t, h, w = (int(v) for v in image_grid_thw)
        return t * h * w // (self.merge_size**2)


# ----------------------------------------------------------------------------- Seg-Zero frame


def resize_for_policy(image: Image.Image | np.ndarray, size: int = SEGZERO_IMAGE_SIZE) -> Image.Image:
    """RGB image resized to ``size x size`` with PIL bilinear, as Seg-Zero feeds the policy."""
    return to_rgb(image).resize((size, size), resample=Image.Resampling.BILINEAR)


def _checked_size(original_size: tuple[int, int]) -> tuple[int, int]:
    width, height = original_size
    if width <= 0 or height <= 0:
        raise ValueError(f"original size (width, height) must be positive, got {original_size}")
    return width, height


def to_policy_frame(coords: Any, original_size: tuple[int, int], size: int = SEGZERO_IMAGE_SIZE) -> np.ndarray:
    """Original-image (x, y, ...) coordinates -> the ``size`` frame as Seg-Zero's data
    preparation maps them: ``int(v * (size / original) + 0.5)`` (the factor first, as it does:
    ``v * size / original`` rounds differently at exact halves, e.g. v 32 on a 512-wide image).

    ``coords`` has an even last dimension of interleaved x, y (a bbox [4] or points [..., 2]);
    ``original_size`` is (width, height).
    """
    coords = np.asarray(coords, dtype=np.float64)
    width, height = _checked_size(original_size)
    scale = np.tile(np.array([size / width, size / height], np.float64), coords.shape[-1] // 2)
    return np.trunc(coords * scale + 0.5).astype(np.int64)


def to_original_frame(coords: Any, original_size: tuple[int, int], size: int = SEGZERO_IMAGE_SIZE) -> np.ndarray:
    """``size``-frame coordinates -> the original image: ``round(int(v) * original / size)``."""
    coords = np.trunc(np.asarray(coords, dtype=np.float64))
    width, height = _checked_size(original_size)
    scale = np.tile(np.array([width / size, height / size], np.float64), coords.shape[-1] // 2)
    return np.round(coords * scale).astype(np.int64)


# ----------------------------------------------------------------------------- chat template


def normalize_question(question: str) -> str:
    """Seg-Zero's question normalisation: lower-cased, periods stripped from both ends."""
    return question.lower().strip(".")


def segzero_user_text(question: str) -> str:
    """The text of Seg-Zero's user turn (without the image) for one referring question."""
    return SEGZERO_QUESTION_TEMPLATE.format(Question=normalize_question(question), Answer=SEGZERO_EXAMPLE_ANSWER)


def _render_content(content: Any, image_count: list[int], add_vision_id: bool) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for item in content:
        if item.get("type") == "image" or "image" in item or "image_url" in item:
            image_count[0] += 1
            prefix = f"Picture {image_count[0]}: " if add_vision_id else ""
            parts.append(f"{prefix}{VISION_START}{IMAGE_PAD}{VISION_END}")
        elif item.get("type") == "video" or "video" in item:
            raise ValueError("video content is not supported")
        elif "text" in item:
            parts.append(item["text"])
    return "".join(parts)


def apply_chat_template(
    messages: Sequence[dict[str, Any]],
    add_generation_prompt: bool = True,
    add_vision_id: bool = False,
) -> str:
    """Qwen2.5-VL-Instruct's chat template: ChatML turns, a default system turn when none is given,
    and ``<|vision_start|><|image_pad|><|vision_end|>`` for each image (one pad, expanded later)."""
    out = []
    image_count = [0]
    for i, message in enumerate(messages):
        if i == 0 and message["role"] != "system":
            out.append(f"<|im_start|>system\n{DEFAULT_SYSTEM_PROMPT}<|im_end|>\n")
        body = _render_content(message["content"], image_count, add_vision_id)
        out.append(f"<|im_start|>{message['role']}\n{body}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def segzero_messages(question: str) -> list[dict[str, Any]]:
    """Chat messages of one Seg-Zero prompt: the image first, then the instruction text."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": segzero_user_text(question)}]}]


def expand_image_pads(text: str, num_tokens: Sequence[int]) -> str:
    """Replaces the k-th ``<|image_pad|>`` with ``num_tokens[k]`` of them (as the HF processor does)."""
    pieces = text.split(IMAGE_PAD)
    if len(pieces) - 1 != len(num_tokens):
        raise ValueError(f"text has {len(pieces) - 1} image placeholders but {len(num_tokens)} images were given")
    out = [pieces[0]]
    for n, piece in zip(num_tokens, pieces[1:]):
        out.append(IMAGE_PAD * int(n))
        out.append(piece)
    return "".join(out)


def segzero_prompt(question: str, image_grid_thw: Sequence[int] | np.ndarray, merge_size: int = MERGE_SIZE) -> str:
    """Full templated Seg-Zero prompt with the image placeholder expanded for ``image_grid_thw``."""
    t, h, w = (int(v) for v in image_grid_thw)
    text = apply_chat_template(segzero_messages(question), add_generation_prompt=True)
    return expand_image_pads(text, [t * h * w // merge_size**2])


# ----------------------------------------------------------------------------- tokenisation


def left_pad(ids: Sequence[int], max_length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token ids to ``max_length``: (input_ids int32[T], attention_mask int32[T])."""
    if len(ids) > max_length:
        raise ValueError(f"prompt has {len(ids)} tokens, more than max_prompt_length={max_length}")
    input_ids = np.full((max_length,), pad_id, dtype=np.int32)
    mask = np.zeros((max_length,), dtype=np.int32)
    if len(ids):
        input_ids[max_length - len(ids):] = np.asarray(ids, dtype=np.int32)
        mask[max_length - len(ids):] = 1
    return input_ids, mask
