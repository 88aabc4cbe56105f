"""Presets equal the published config.json values; HF config I/O; validation errors."""

import dataclasses

import pytest

from segzero_jax.models.qwen2_5_vl import (Qwen2_5_VLConfig, TextConfig, VisionConfig, from_hf_dict, preset,
                                          to_hf_dict)

# Fields of Qwen/Qwen2.5-VL-{3B,7B}-Instruct config.json.
_VISION = {"depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
           "in_chans": 3, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
           "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
           "temporal_patch_size": 2}
_COMMON = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "attention_dropout": 0.0,
           "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652,
           "vision_end_token_id": 151653, "vision_token_id": 151654, "image_token_id": 151655,
           "video_token_id": 151656, "hidden_act": "silu", "initializer_range": 0.02,
           "max_position_embeddings": 128000, "model_type": "qwen2_5_vl", "rms_norm_eps": 1e-06,
           "rope_theta": 1000000.0, "sliding_window": 32768, "torch_dtype": "bfloat16", "use_cache": True,
           "use_sliding_window": False, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}
PUBLISHED = {
    "3b": {**_COMMON, "hidden_size": 2048, "intermediate_size": 11008, "max_window_layers": 70,
           "num_attention_heads": 16, "num_hidden_layers": 36, "num_key_value_heads": 2,
           "tie_word_embeddings": True, "vocab_size": 151936,
           "vision_config": {**_VISION, "out_hidden_size": 2048}},
    "7b": {**_COMMON, "hidden_size": 3584, "intermediate_size": 18944, "max_window_layers": 28,
           "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
           "tie_word_embeddings": False, "vocab_size": 152064,
           "vision_config": {**_VISION, "out_hidden_size": 3584}},
}


@pytest.mark.parametrize("name", ["3b", "7b"])
def test_presets_equal_published_config(name):
    assert from_hf_dict(PUBLISHED[name]) == preset(name)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["3b", "7b", "tiny"])
def test_to_hf_dict_is_read_by_transformers(name):
    from transformers import Qwen2_5_VLConfig as HF
    ours = preset(name)
    hf = HF(**to_hf_dict(ours))
    t, v = hf.text_config, hf.vision_config
    assert (t.hidden_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
            t.intermediate_size, t.vocab_size) == (ours.text.hidden_size, ours.text.num_layers,
                                                   ours.text.num_heads, ours.text.num_kv_heads,
                                                   ours.text.intermediate_size, ours.text.vocab_size)
    assert list(t.rope_parameters["mrope_section"]) == list(ours.text.mrope_section)
    assert t.rope_parameters["rope_theta"] == ours.text.rope_theta
    assert (v.depth, v.hidden_size, v.out_hidden_size, list(v.fullatt_block_indexes), v.window_size) == (
        ours.vision.depth, ours.vision.hidden_size, ours.vision.out_hidden_size,
        list(ours.vision.fullatt_block_indexes), ours.vision.window_size)
    assert hf.tie_word_embeddings == ours.tie_word_embeddings
    assert from_hf_dict(hf.to_dict()) == ours          # nested transformers-5 layout reads back


def test_param_counts_match_published_sizes():
    from segzero_jax.models.qwen2_5_vl import abstract_params
    import math
    import jax
    n3 = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(preset("3b"))))
    n7 = sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(abstract_params(preset("7b"))))
    assert 3.70e9 < n3 < 3.80e9      # Qwen2.5-VL-3B: 3.75B
    assert 8.25e9 < n7 < 8.35e9      # Qwen2.5-VL-7B: 8.29B


@pytest.mark.parametrize("change, field", [
    (dict(dtype="float64"), "dtype"),
    (dict(remat_policy="sometimes"), "remat_policy"),
    (dict(attention_impl="flash"), "attention_impl"),
    (dict(text=TextConfig(num_heads=16, num_kv_heads=3)), "text.num_kv_heads"),
    (dict(text=TextConfig(mrope_section=(16, 24, 16))), "text.mrope_section"),
    (dict(vision=VisionConfig(fullatt_block_indexes=(40,))), "vision.fullatt_block_indexes"),
    (dict(vision=VisionConfig(out_hidden_size=3584)), "vision.out_hidden_size"),
])
def test_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"Qwen2_5_VLConfig.{field}"):
        dataclasses.replace(Qwen2_5_VLConfig(), **change)


def test_bad_hf_config():
    with pytest.raises(ValueError, match="model_type"):
        from_hf_dict({"model_type": "llama"})
    with pytest.raises(ValueError, match="use_sliding_window"):
        from_hf_dict({**PUBLISHED["3b"], "use_sliding_window": True})
    with pytest.raises(ValueError, match="unknown Qwen2.5-VL preset"):
        preset("13b")


def test_models_import_without_torch_transformers_or_data_stacks():
    import subprocess
    import sys
    code = ("import sys\n"
            "for m in ('torch', 'transformers', 'grain', 'tensorflow', 'tensorflow_datasets'):\n"
            "    sys.modules[m] = None\n"
            "import segzero_jax.models.qwen2_5_vl as q\n"
            "import segzero_jax.models.qwen2_5_vl.convert\n"
            "print(q.preset('tiny').text.hidden_size)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                         env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "64"
