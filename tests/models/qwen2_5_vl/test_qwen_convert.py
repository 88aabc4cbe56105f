"""HF safetensors <-> params: published (legacy) names, sharded index, export loadable by transformers."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import flax.linen as nn

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, TextConfig, export_hf, load_hf, preset
from segzero_jax.models.qwen2_5_vl.convert import RULES, canonical_name, match_rule
from segzero_jax.parallel import make_mesh
from segzero_jax.parallel.sharding import logical_shardings
from segzero_jax.models.qwen2_5_vl.model import init_params
from segzero_jax.models.tensor_files import WeightFileError
from tests.models.qwen2_5_vl.hf_reference import IMG, build_hf_model, image_batch
from tests.tolerance import assert_parity

LEGACY = (("model.language_model.", "model."), ("model.visual.", "visual."))


def _legacy_name(name):
    for new, old in LEGACY:
        if name.startswith(new):
            return old + name[len(new):]
    return name


def _write_published_layout(model, path, n_shards=3):
    """The published Qwen2.5-VL-*-Instruct layout: flat config.json, old names, sharded + index."""
    os.makedirs(path, exist_ok=True)
    tensors = {_legacy_name(k): v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    names = sorted(tensors)
    weight_map = {}
    for s in range(n_shards):
        file = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: np.ascontiguousarray(tensors[k]) for k in names[s::n_shards]}
        save_file(part, os.path.join(path, file))
        weight_map.update({k: file for k in part})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    tc, vc = model.config.text_config, model.config.vision_config
    flat = {"architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
            "hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size,
            "num_hidden_layers": tc.num_hidden_layers, "num_attention_heads": tc.num_attention_heads,
            "num_key_value_heads": tc.num_key_value_heads, "rms_norm_eps": tc.rms_norm_eps,
            "rope_theta": tc.rope_parameters["rope_theta"], "vocab_size": tc.vocab_size, "hidden_act": "silu",
            "max_position_embeddings": 128000, "sliding_window": 32768, "use_sliding_window": False,
            "tie_word_embeddings": model.config.tie_word_embeddings, "image_token_id": IMG,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "vision_config": {"depth": vc.depth, "hidden_size": vc.hidden_size, "hidden_act": "silu",
                              "intermediate_size": vc.intermediate_size, "num_heads": vc.num_heads,
                              "in_chans": 3, "out_hidden_size": vc.out_hidden_size, "patch_size": 14,
                              "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
                              "fullatt_block_indexes": list(vc.fullatt_block_indexes),
                              "tokens_per_second": 2, "temporal_patch_size": 2}}
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(flat, f)


@pytest.fixture(scope="module")
def inputs():
    return image_batch(np.random.RandomState(21), [[1, 6, 8], [1, 4, 6]], [(4, 3), (1, 2)])


def _ours(cfg, params, inputs):
    ids, mask, pixels, grid = inputs
    fn = jax.jit(lambda p, i, pv, m: Qwen2_5_VL(cfg).apply({"params": p}, i, pv, grid, m))
    return np.asarray(fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32)))


def _hf_logits(model, inputs):
    ids, mask, pixels, grid = inputs
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     pixel_values=torch.tensor(pixels), image_grid_thw=torch.tensor(grid),
                     mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64))).logits.numpy()


def test_every_param_has_a_rule_and_names_round_trip(ours_tied):
    cfg, params = ours_tied
    paths = {"/".join(str(k.key) for k in kp) for kp, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert paths == {r.path for r in RULES if not r.only_untied}
    assert canonical_name("visual.blocks.3.attn.qkv.weight") == "vision.blocks.3.attn.qkv.weight"
    assert canonical_name("model.layers.0.mlp.up_proj.weight") == "lm.layers.0.mlp.up_proj.weight"
    rule, layer = match_rule("lm.layers.17.self_attn.o_proj.weight")
    assert (rule.path.endswith("/o/kernel"), layer) == (True, 17)
    with pytest.raises(ValueError, match="no conversion rule.*rotary"):
        match_rule("lm.layers.0.self_attn.rotary_emb.inv_freq")


def test_published_layout_loads_same_params(hf_tied, ours_tied, tmp_path):
    model, _ = hf_tied
    cfg, params = ours_tied
    _write_published_layout(model, str(tmp_path))
    cfg2, params2 = load_hf(str(tmp_path))
    assert cfg2.text == dataclasses.replace(cfg.text, max_position_embeddings=128000)
    assert cfg2.vision == dataclasses.replace(cfg.vision, tokens_per_second=2)
    assert cfg2.tie_word_embeddings and cfg2.text.mrope_section == (2, 3, 3)
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)
    assert all(isinstance(x, np.ndarray) for x in jax.tree_util.tree_leaves(params2))
    # The module names of transformers 5 (model.language_model.*, model.visual.*), one file.
    new = tmp_path / "new_names"
    new.mkdir()
    save_file({k: v.detach().numpy() for k, v in model.state_dict().items()}, str(new / "model.safetensors"))
    (new / "config.json").write_text((tmp_path / "config.json").read_text())
    _, params3 = load_hf(str(new))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params3, params)


@pytest.mark.parity
@pytest.mark.slow
def test_untied_checkpoint_logits(inputs, tmp_path):
    """The 7B layout (separate lm_head), through the published layout."""
    model = build_hf_model(tie=False, seed=1)
    _write_published_layout(model, str(tmp_path), n_shards=2)
    cfg, params = load_hf(str(tmp_path))
    assert not cfg.tie_word_embeddings and "lm_head" in params["language_model"]
    valid = inputs[1].astype(bool)
    assert_parity(_ours(cfg, params, inputs)[valid], _hf_logits(model, inputs)[valid], "logits")


@pytest.mark.parity
@pytest.mark.slow
def test_export_loads_in_transformers_with_same_logits(ours_tied, inputs, tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration
    cfg, _ = ours_tied
    params = jax.device_get(nn.unbox(init_params(cfg, jax.random.key(7))))
    files = export_hf(cfg, params, str(tmp_path), max_shard_bytes=8 << 20)
    assert len(files) > 1 and os.path.exists(tmp_path / "model.safetensors.index.json")
    loaded = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    valid = inputs[1].astype(bool)
    assert_parity(_ours(cfg, params, inputs)[valid], _hf_logits(loaded, inputs)[valid], "logits")
    cfg2, params2 = load_hf(str(tmp_path))        # and back again
    assert cfg2.text == cfg.text and cfg2.vision == cfg.vision
    jax.tree_util.tree_map(np.testing.assert_array_equal, params2, params)


def test_bfloat16_export_and_load(ours_tied, tmp_path):
    cfg, params = ours_tied
    export_hf(cfg, params, str(tmp_path), dtype="bfloat16")
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["torch_dtype"] == "bfloat16"
    cfg2, params2 = load_hf(str(tmp_path), param_dtype="bfloat16")
    assert cfg2.param_dtype == "bfloat16"
    leaf = params2["language_model"]["embedding"]
    assert leaf.dtype == jnp.bfloat16
    np.testing.assert_array_equal(leaf, params["language_model"]["embedding"].astype(jnp.bfloat16))


def test_load_onto_shardings(hf_tied):
    _, path = hf_tied
    mesh = make_mesh((2, 2, 2))
    cfg, _ = load_hf(path)
    boxed = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
    shardings = logical_shardings(boxed, mesh)
    _, params = load_hf(path, shardings=shardings)
    q = params["language_model"]["decoder"]["layers"]["layer"]["q"]["kernel"]   # [layers, D, N, H]
    assert isinstance(q, jax.Array) and q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 2, 16)


def test_clear_errors(hf_tied, tmp_path):
    model, path = hf_tied
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(str(tmp_path / "nope"))
    # unknown tensor
    bad = tmp_path / "bad"
    _write_published_layout(model, str(bad), n_shards=1)
    save_file({"visual.blocks.0.attn.extra.weight": np.zeros(3, np.float32)}, str(bad / "extra.safetensors"))
    idx = json.loads((bad / "model.safetensors.index.json").read_text())
    idx["weight_map"]["visual.blocks.0.attn.extra.weight"] = "extra.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match="visual.blocks.0.attn.extra.weight"):
        load_hf(str(bad))
    # missing tensor
    del idx["weight_map"]["visual.blocks.0.attn.extra.weight"]
    del idx["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (bad / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(ValueError, match=r"lm.layers.\{i\}.mlp.up_proj.weight.*\[1\]"):
        load_hf(str(bad))
    # config that does not match the tensors
    wrong = preset("tiny", text=TextConfig(vocab_size=151936, hidden_size=64, intermediate_size=128,
                                           num_layers=2, num_heads=4, num_kv_heads=2, mrope_section=(2, 3, 3)))
    with pytest.raises(ValueError, match="mlp.*_proj.weight.*does not fit"):
        load_hf(path, config=wrong)


def test_damaged_or_missing_shard_is_named(hf_tied, tmp_path):
    model, _ = hf_tied
    d = tmp_path / "sharded"
    _write_published_layout(model, str(d), n_shards=2)
    shards = sorted(p for p in d.iterdir() if p.suffix == ".safetensors")
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=f"{shards[1]}: not a readable safetensors file"):
        load_hf(str(d))
    shards[1].unlink()
    with pytest.raises(FileNotFoundError, match=str(shards[1])):
        load_hf(str(d))
