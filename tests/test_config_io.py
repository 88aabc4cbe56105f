"""Model configs survive a JSON round trip; stale fields are named."""

import json

import pytest

from segzero_jax import config_io
from segzero_jax.models import qwen2_5_vl, sam2


@pytest.mark.parametrize("name", sorted(qwen2_5_vl.PRESETS))
def test_qwen_presets_round_trip(name):
    config = qwen2_5_vl.preset(name)
    blob = json.loads(json.dumps(config_io.to_dict(config)))
    assert config_io.from_dict(qwen2_5_vl.Qwen2_5_VLConfig, blob) == config


@pytest.mark.parametrize("name", sorted(sam2.PRESETS))
def test_sam2_presets_round_trip(name):
    config = sam2.get_preset(name)
    blob = json.loads(json.dumps(config_io.to_dict(config)))
    assert config_io.from_dict(sam2.Sam2Config, blob) == config


def test_unknown_field_is_named():
    blob = config_io.to_dict(qwen2_5_vl.preset("tiny"))
    blob["text"]["num_layer"] = 3
    with pytest.raises(ValueError, match=r"config.text: unknown field\(s\) \['num_layer'\]"):
        config_io.from_dict(qwen2_5_vl.Qwen2_5_VLConfig, blob)
