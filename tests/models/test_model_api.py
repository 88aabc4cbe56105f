"""Both model packages expose one pattern: `PRESETS` of configs, `get_preset(name, **overrides)`
and `load_checkpoint(path, config=None, ...) -> (config, params)`; the policy's earlier names
(`preset`, `load_hf`) stay as aliases."""

import inspect

import pytest

from segzero_jax.models import qwen2_5_vl, sam2


@pytest.mark.parametrize("package,name,field,value", [(qwen2_5_vl, "tiny", "scan_layers", False),
                                                      (sam2, "test_tiny", "scan_blocks", False)])
def test_get_preset_applies_overrides_to_a_copy(package, name, field, value):
    config = package.get_preset(name, **{field: value})
    assert getattr(config, field) == value and config == package.PRESETS[name].replace(**{field: value})
    assert getattr(package.PRESETS[name], field) != value   # the registered preset is unchanged
    with pytest.raises(ValueError, match=r"unknown .* preset 'nope'"):
        package.get_preset("nope")


def test_loaders_share_a_signature_and_the_old_names_remain():
    for package in (qwen2_5_vl, sam2):
        signature = inspect.signature(package.load_checkpoint)
        params = list(signature.parameters)
        assert params[:2] == ["path", "config"], package.__name__
        assert signature.parameters["shardings"].kind is inspect.Parameter.KEYWORD_ONLY, package.__name__
    assert qwen2_5_vl.preset is qwen2_5_vl.get_preset
    assert qwen2_5_vl.load_hf is qwen2_5_vl.load_checkpoint
