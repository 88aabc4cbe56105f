"""The Seg-Zero recipe with the Qwen2.5-VL-3B policy (tied embeddings)."""

from experiments.configs import common


def get_config():
    config = common.reference_config()
    config.model.policy_preset = "3b"
    return config
