"""Experiment configs validate, and a bad field is reported by its path."""

import importlib

import pytest

from experiments.configs import common

CONFIGS = ["default", "seg_zero_3b", "seg_zero_7b"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_validates(name):
    config = importlib.import_module(f"experiments.configs.{name}").get_config()
    assert common.validate(config) is config


@pytest.mark.parametrize("field,value,message", [
    ("rl.reward", "seg_fuzzy", r"config.rl.reward: 'seg_fuzzy' is not one of"),
    ("rl.advantage_estimator", "ppo", r"config.rl.advantage_estimator: 'ppo' is not one of"),
    ("rl.group_size", 0, r"config.rl.group_size: must be a positive integer"),
    ("rl.micro_batch_size", 7, r"config.rl.micro_batch_size: 7 does not divide the 128 responses"),
    ("rl.clip_ratio_low", 1.5, r"config.rl.clip_ratio_low: must be a number in"),
    ("rl.update_batch_size", 3, r"config.rl.update_batch_size: 3 does not divide the 16 prompts"),
    ("rl.policy_loss", "dpo", r"config.rl.policy_loss: 'dpo' is not one of"),
    ("rl.overlong_buffer", 1300, r"config.rl.overlong_buffer: 1300 must be below"),
    ("rl.top_k", -1, r"config.rl.top_k: must be a non-negative integer"),
    ("rl.loss_aggregation", "mean", r"config.rl.loss_aggregation"),
    ("model.policy_preset", "72b", r"config.model.policy_preset"),
    ("model.remat_policy", "some", r"config.model.remat_policy"),
    ("data.image_size", 850, r"config.data.image_size: must be a multiple of 28"),
    ("data.batch_size", 0, r"config.data: input pipeline config: batch_size must be positive"),
    ("data.shard_count", 2, r"config.data: input pipeline config: unknown field\(s\) \['shard_count'\]"),
    ("mesh.shape", (2, -1, -1), r"config.mesh.shape: sizes must be positive with at most one -1"),
    ("mesh.shape", (2, 2), r"config.mesh.shape: needs one size per axis"),
])
def test_bad_field_is_named(field, value, message):
    config = common.reference_config()
    section, key = field.split(".")
    with config.unlocked():
        config[section][key] = value
    with pytest.raises(common.ConfigError, match=message):
        common.validate(config)


def test_axis_rule_to_unknown_mesh_axis():
    config = common.reference_config()
    config.mesh.axis_rules = tuple(config.mesh.axis_rules) + (("extra", "model"),)
    with pytest.raises(common.ConfigError, match=r"config.mesh.axis_rules: .*unknown mesh axis 'model'"):
        common.validate(config)
