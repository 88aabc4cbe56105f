"""experiments.convert: HF Qwen2.5-VL + Meta SAM2 -> Orbax model directories -> HF again."""

import os

import jax
import numpy as np
import pytest

from experiments import convert
from segzero_jax import checkpoint
from tests.experiments.scripts import run_module
from tests.models.qwen2_5_vl.hf_reference import build_hf_model


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models
    model = build_hf_model(tie=False, seed=3)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(str(path))
    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(path / "tokenizer.json"))
    return model, str(path)


@pytest.mark.parity
def test_qwen_import_then_export_reproduces_the_hf_weights(hf_dir, tmp_path):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    model, path = hf_dir
    convert.import_qwen(path, str(tmp_path / "out"), "float32")
    policy = tmp_path / "out" / "policy"
    assert (policy / "tokenizer" / "tokenizer.json").read_bytes() == open(
        os.path.join(path, "tokenizer.json"), "rb").read()
    config, params = checkpoint.restore_policy(str(policy))
    assert not config.tie_word_embeddings and config.text.num_layers == 2

    convert.export_policy(str(tmp_path / "out"), str(tmp_path / "hf_again"))
    assert (tmp_path / "hf_again" / "tokenizer.json").exists()
    again = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "hf_again")).eval()
    want, got = model.state_dict(), again.state_dict()
    assert set(want) == set(got)
    for name, tensor in want.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=0, msg=name)


def test_qwen_import_in_bfloat16(hf_dir, tmp_path):
    _, path = hf_dir
    convert.import_qwen(path, str(tmp_path), "bfloat16")
    config, params = checkpoint.restore_policy(str(tmp_path / "policy"))
    assert config.param_dtype == "bfloat16"
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(params)} == {np.dtype(jax.numpy.bfloat16)}


@pytest.mark.slow
def test_sam2_import_matches_direct_conversion(tmp_path):
    from segzero_jax.models.sam2 import get_preset, load_checkpoint
    from tests.models.sam2 import reference
    cfg = get_preset("test_tiny")
    pt = reference.save_checkpoint(reference.build_reference(cfg, seed=5), str(tmp_path))
    convert.import_sam2(pt, str(tmp_path / "out"), "test_tiny")
    config, params = checkpoint.restore_sam2(str(tmp_path / "out" / "sam2"))
    assert config == cfg
    _, direct = load_checkpoint(pt, cfg)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, direct)
    # the per-block layout: a model directory whose config says so, params filled block by block
    convert.import_sam2(pt, str(tmp_path / "blocks"), "test_tiny", scan_blocks=False)
    config, params = checkpoint.restore_sam2(str(tmp_path / "blocks" / "sam2"))
    assert config == cfg.replace(scan_blocks=False) and "block_5" in params["trunk"]
    np.testing.assert_array_equal(np.asarray(params["trunk"]["block_5"]["attn"]["q_kernel"]),
                                  np.asarray(direct["trunk"]["segment_4"]["attn"]["q_kernel"][1]))


def test_command_line_reports_missing_inputs(tmp_path):
    run = lambda *args: run_module("experiments.convert", *args, timeout=120)
    missing = run(f"--qwen_hf_dir={tmp_path}/absent", f"--out={tmp_path}/o")
    assert missing.returncode != 0 and "absent does not exist" in missing.stderr
    nothing = run(f"--out={tmp_path}/o")
    assert nothing.returncode != 0 and "at least one of" in nothing.stderr
