"""Session fixtures: a tiny transformers Qwen2.5-VL saved in the real HF format, and ours loaded from it."""

import pytest

from tests.models.qwen2_5_vl.hf_reference import build_hf_model


@pytest.fixture(scope="session")
def hf_tied(tmp_path_factory):
    """(torch model, checkpoint dir) for tied embeddings (the 3B layout)."""
    model = build_hf_model(tie=True)
    path = tmp_path_factory.mktemp("qwen_tied")
    model.save_pretrained(str(path))
    return model, str(path)


@pytest.fixture(scope="session")
def ours_tied(hf_tied):
    from segzero_jax.models.qwen2_5_vl import load_hf
    return load_hf(hf_tied[1])
