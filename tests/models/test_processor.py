"""Parity of the Qwen2.5-VL processor with transformers (PIL backend) and the Seg-Zero prompt."""

import numpy as np
import pytest
from PIL import Image

from segzero_jax.models.qwen2_5_vl import processor as P

transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

# Qwen2.5-VL-Instruct's chat_template.json, verbatim (transformers ships no copy of it).
QWEN2_5_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
            "<|image_pad|>", "<|video_pad|>"]


def _byte_tokenizer():
    """A byte-level tokenizer with Qwen's special tokens, built offline."""
    alphabet = sorted(set(pre_tokenizers.ByteLevel.alphabet()))
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


@pytest.fixture(scope="module")
def hf_processor():
    class ImageOnlyProcessor(transformers.Qwen2_5_VLProcessor):
        # The video processor needs torchvision; images never touch it.
        def check_argument_for_proper_class(self, name, arg):
            if name == "video_processor":
                return None
            return super().check_argument_for_proper_class(name, arg)

    hf_tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=_byte_tokenizer(), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    return ImageOnlyProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=hf_tok,
                              video_processor=None, chat_template=QWEN2_5_VL_CHAT_TEMPLATE)


SIZES = [(840, 840), (33, 47), (10, 500), (3000, 2000), (123, 456), (29, 28), (2, 300)]


@pytest.mark.parity
@pytest.mark.parametrize("height,width", SIZES)
def test_pixel_values_match_transformers(height, width):
    rng = np.random.default_rng(height * 7 + width)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    ref = Qwen2VLImageProcessorPil()(images=[image], return_tensors="np")
    ours = P.ImageProcessor()([image])
    np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
    assert ours["pixel_values"].shape == ref["pixel_values"].shape
    assert ours["pixel_values"].dtype == np.float32
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)


@pytest.mark.parity
def test_min_max_pixels_and_modes_match_transformers():
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (70, 90, 4), dtype=np.uint8), mode="RGBA")
    gray = Image.fromarray(rng.integers(0, 256, (300, 200), dtype=np.uint8), mode="L")
    kwargs = dict(min_pixels=128 * 28 * 28, max_pixels=256 * 28 * 28)
    ref = Qwen2VLImageProcessorPil(**kwargs)(images=[rgba, gray], return_tensors="np")
    ours = P.ImageProcessor(**kwargs)([rgba, gray])
    np.testing.assert_array_equal(ours["image_grid_thw"], ref["image_grid_thw"])
    np.testing.assert_allclose(ours["pixel_values"], ref["pixel_values"], atol=1e-5, rtol=0)
    for t, h, w in ours["image_grid_thw"]:
        assert 128 * 28 * 28 <= h * w * 14 * 14 <= 256 * 28 * 28


@pytest.mark.parity
def test_smart_resize_matches_and_rejects_extreme_aspect():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(1)
    for h, w in rng.integers(1, 5000, size=(200, 2)):
        if max(h, w) / min(h, w) > 200:
            continue
        assert P.smart_resize(int(h), int(w)) == smart_resize(int(h), int(w))
    with pytest.raises(ValueError, match="aspect ratio"):
        P.smart_resize(1, 300)


@pytest.mark.parity
@pytest.mark.parametrize("question", ["The Red Circle.", "...what would you use to cut paper?.", "Left Cup"])
def test_chat_template_and_expanded_prompt_match_transformers(hf_processor, question):
    messages = P.segzero_messages(question)
    ref_text = hf_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert P.apply_chat_template(messages, add_generation_prompt=True) == ref_text
    image = Image.new("RGB", (840, 840), (10, 200, 30))
    out = hf_processor(text=[ref_text], images=[image], return_tensors="np")
    ours = P.segzero_prompt(question, out["image_grid_thw"][0])
    assert hf_processor.tokenizer.decode(out["input_ids"][0]) == ours
    assert ours.count(P.IMAGE_PAD) == 900  # 60 x 60 patches merged 2 x 2


@pytest.mark.parity
def test_chat_template_other_shapes_match_transformers(hf_processor):
    conversations = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "image"}]},
         {"role": "assistant", "content": "b"}],
    ]
    for messages in conversations:
        for gen in (True, False):
            for vid in (True, False):
                ref = hf_processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen,
                                                       add_vision_id=vid)
                assert P.apply_chat_template(messages, add_generation_prompt=gen, add_vision_id=vid) == ref


def test_segzero_prompt_text():
    text = P.segzero_user_text("  The Largest Red Object..")
    assert text.startswith("Please find '  the largest red object' with bbox and points.Compare the difference")
    assert text.endswith("<answer>{'bbox': [10,100,200,210], 'points_1': [30,110], 'points_2': [35,180]}</answer>")
    prompt = P.segzero_prompt("x.", (1, 4, 6))
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                             "<|vision_start|>" + "<|image_pad|>" * 6 + "<|vision_end|>Please find 'x' with")
    assert prompt.endswith("</answer><|im_end|>\n<|im_start|>assistant\n")


def test_policy_resize_is_pil_bilinear_and_coordinates_round_trip():
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, (300, 500, 3), dtype=np.uint8)
    resized = P.resize_for_policy(arr)
    assert resized.size == (840, 840)
    expected = Image.fromarray(arr).resize((840, 840), Image.BILINEAR)
    np.testing.assert_array_equal(np.asarray(resized), np.asarray(expected))
    # Ground truth onto the frame: int(v * 840 / W + 0.5); predictions back: round(int(v) * W / 840).
    box = np.array([100, 50, 499, 299])
    framed = P.to_policy_frame(box, (500, 300))
    np.testing.assert_array_equal(framed, [168, 140, 838, 837])
    np.testing.assert_array_equal(P.to_original_frame(framed, (500, 300)), [100, 50, 499, 299])
    np.testing.assert_array_equal(P.to_original_frame([[30.9, 110.2]], (420, 1680)), [[15, 220]])


def test_policy_frame_rounds_as_seg_zero_preparation():
    """Seg-Zero's preparation computes x_factor = 840 / width, then int(v * x_factor + 0.5):
    at exact halves that differs from v * 840 / width (v 32 on a 512-wide image: 53, not 52)."""
    assert P.to_policy_frame([32, 0], (512, 300)).tolist() == [53, 0]
    rng = np.random.default_rng(0)
    for _ in range(300):
        width, height = (int(v) for v in rng.integers(1, 2000, 2))
        xs, ys = rng.integers(0, width, 8), rng.integers(0, height, 8)
        x_factor, y_factor = 840 / width, 840 / height
        expected = [[int(int(x) * x_factor + 0.5), int(int(y) * y_factor + 0.5)] for x, y in zip(xs, ys)]
        got = P.to_policy_frame(np.stack([xs, ys], 1), (width, height))
        np.testing.assert_array_equal(got, expected)


def test_left_pad_and_errors():
    ids, mask = P.left_pad([5, 6, 7], 5, pad_id=0)
    np.testing.assert_array_equal(ids, [0, 0, 5, 6, 7])
    np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1])
    assert ids.dtype == np.int32
    with pytest.raises(ValueError, match="max_prompt_length=2"):
        P.left_pad([1, 2, 3], 2, pad_id=0)
    with pytest.raises(ValueError, match="2 images"):
        P.expand_image_pads("<|image_pad|>", [1, 2])
    with pytest.raises(ValueError, match="uint8"):
        P.to_rgb(np.zeros((4, 4, 3), np.float32))


def test_library_modules_import_without_data_or_reference_packages():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'grain', 'tensorflow', 'tensorflow_datasets', 'torch', 'transformers'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import segzero_jax.masks, segzero_jax.models.qwen2_5_vl.processor\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
