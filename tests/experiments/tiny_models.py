"""Tiny random models written as an `experiments.convert`-style directory, and a small
synthetic split, for the evaluation / inference / demo tests."""

import os

import flax.linen as nn
import jax
import numpy as np

from segzero_jax import checkpoint

SYNTHETIC = {"image_size": 56, "num_train": 1, "num_validation": 1, "num_test": 3}


def write_models(root: str, seed: int = 0) -> str:
    """root/policy (Qwen2.5-VL preset "tiny", random) and root/sam2 (preset "test_tiny", random)."""
    from segzero_jax.models import qwen2_5_vl
    from segzero_jax.models.sam2 import get_preset, random_params

    policy = qwen2_5_vl.preset("tiny")
    params = random_policy_params(policy, seed)
    checkpoint.save_model(os.path.join(root, "policy"), checkpoint.POLICY_KIND, policy, params)
    sam = get_preset("test_tiny")
    checkpoint.save_model(os.path.join(root, "sam2"), checkpoint.SAM2_KIND, sam,
                          random_params(sam, jax.random.PRNGKey(seed + 1), scale=0.1))
    return root


def random_policy_params(config, seed: int, scale: float = 0.05) -> dict:
    """N(0, scale^2) weights of the policy's shapes, norm scales 1: made from the abstract tree
    with numpy (no compile), for tests that need a policy, not a trained one."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if "norm" in name and name.endswith("scale"):
            return np.ones(leaf.shape, leaf.dtype)
        return (scale * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

    from segzero_jax.models import qwen2_5_vl
    return jax.tree_util.tree_map_with_path(fill, nn.meta.unbox(qwen2_5_vl.abstract_params(config)))


def synthetic_split(data_dir: str, split: str = "test"):
    """The records of a small synthetic split (built on first use)."""
    from data_pipelines.input_pipeline import load_data_source

    return load_data_source({"dataset": "synthetic", "split": split, "data_dir": data_dir,
                             "builder_config": SYNTHETIC})


def image_file(path: str, size=(48, 64)) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path
