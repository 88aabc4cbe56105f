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


@pytest.mark.parametrize("path,value,message", [
    (("image_size",), "1024", r"dir/config.json.image_size: expected an integer, got str '1024'"),
    (("stages",), [1, "2", 7, 2], r"dir/config.json.stages\[1\]: expected an integer"),
    (("window_spec",), 8, r"dir/config.json.window_spec: expected a list, got int 8"),
    (("scan_blocks",), "false", r"dir/config.json.scan_blocks: expected true or false"),
    (("mask_threshold",), "0", r"dir/config.json.mask_threshold: expected a number"),
    (("dtype",), "bfloat17", r"dir/config.json.dtype: expected a dtype name"),
    (("dtype",), "zeros", r"dir/config.json.dtype: expected a dtype name"),
    (("attention_implementation",), 3, r"dir/config.json.attention_implementation: expected a string"),
    # the config's own checks, prefixed with the file
    (("q_pool",), 9, r"dir/config.json: Sam2Config.q_pool=9 must be in \[0, 3\]"),
])
def test_sam2_fields_of_the_wrong_type_are_named(path, value, message):
    blob = json.loads(json.dumps(config_io.to_dict(sam2.get_preset("hiera_large"))))
    blob[path[0]] = value
    with pytest.raises(ValueError, match=message):
        config_io.from_dict(sam2.Sam2Config, blob, "dir/config.json")


def test_qwen_nested_fields_of_the_wrong_type_are_named():
    good = json.loads(json.dumps(config_io.to_dict(qwen2_5_vl.preset("tiny"))))
    for part, field, value, message in [
            ("vision", "depth", 2.5, r"config.vision.depth: expected an integer, got float 2.5"),
            ("vision", "fullatt_block_indexes", [0, None], r"config.vision.fullatt_block_indexes\[1\]"),
            ("text", "rope_theta", True, r"config.text.rope_theta: expected a number, got bool True")]:
        blob = json.loads(json.dumps(good))
        blob[part][field] = value
        with pytest.raises(ValueError, match=message):
            config_io.from_dict(qwen2_5_vl.Qwen2_5_VLConfig, blob)
    blob = json.loads(json.dumps(good))
    blob["vision"] = []
    with pytest.raises(ValueError, match="config.vision: expected an object of VisionConfig fields"):
        config_io.from_dict(qwen2_5_vl.Qwen2_5_VLConfig, blob)
    # numbers where JSON wrote an integer for a float field are taken as floats
    blob = json.loads(json.dumps(good))
    blob["text"]["rope_theta"] = int(good["text"]["rope_theta"])
    config = config_io.from_dict(qwen2_5_vl.Qwen2_5_VLConfig, blob)
    assert isinstance(config.text.rope_theta, float) and config == qwen2_5_vl.preset("tiny")


def test_optional_fields_take_null_or_their_type():
    import dataclasses
    from typing import Optional

    @dataclasses.dataclass(frozen=True)
    class WithOptional:
        sizes: Optional[tuple[int, ...]] = None
        limit: Optional[int] = 3

    got = config_io.from_dict(WithOptional, {"sizes": [1, 2], "limit": None})
    assert got == WithOptional(sizes=(1, 2), limit=None)
    with pytest.raises(ValueError, match=r"config.sizes\[1\]: expected an integer"):
        config_io.from_dict(WithOptional, {"sizes": [1, "2"]})
    with pytest.raises(ValueError, match="config.limit: expected an integer, got str 'x'"):
        config_io.from_dict(WithOptional, {"limit": "x"})
