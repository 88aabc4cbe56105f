"""Restores the policy, its tokenizer and SAM2 for evaluation and inference.

`--checkpoint=DIR` may be

  * an `experiments.convert` output: ``DIR/policy/`` (+ ``tokenizer/``) and ``DIR/sam2/``;
  * a single model directory (``DIR/config.json`` + ``DIR/params/``), the policy or SAM2;
  * a training workdir: through `restore_training_workdir` (the trainer's hook, below).

`--sam2=PATH` overrides the SAM2 found there: a SAM2 model directory, or Meta's released
``sam2_hiera_*.pt`` read directly (`segzero_jax.models.sam2.load_checkpoint`, the preset
inferred from the file or given). The tokenizer is the policy directory's ``tokenizer/``
(``tokenizer.json``) when present, else the default Qwen2.5 vocabulary. With a `mesh`, the
policy lands sharded by its logical axes and SAM2 replicated.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import jax

from segzero_jax import checkpoint, config_io

POLICY_DIR, SAM2_DIR, TOKENIZER_DIR = "policy", "sam2", "tokenizer"


class Models(NamedTuple):
    policy_config: Any
    policy_params: Any
    tokenizer: Any
    sam2_config: Any
    sam2_params: Any


def _is_model_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, checkpoint.CONFIG_FILE))


def _kind(path: str) -> str:
    return checkpoint.load_model_config(path)[0]


def restore_training_workdir(workdir: str, step: Optional[str] = None, mesh=None) -> Models:
    """(policy, tokenizer, SAM2) of an `experiments.train` workdir at `step` ("latest" or None:
    the newest checkpoint, "best": WORKDIR/best, or a step number). The tokenizer and SAM2 are
    those the run was configured with (WORKDIR/run_config.json)."""
    import json

    from segzero_jax import train_checkpoints as tc
    if not tc.is_training_workdir(workdir):
        raise FileNotFoundError(
            f"{workdir} is neither a model directory (config.json + params/), an experiments.convert output "
            f"(policy/, sam2/) nor a training workdir ({tc.POLICY_CONFIG} + {tc.CHECKPOINTS}/)")
    which = "newest" if step in (None, "", "latest", "newest") else step
    shardings = None
    if mesh is not None:
        from segzero_jax.models.qwen2_5_vl import abstract_params
        from segzero_jax.parallel import logical_shardings
        shardings = logical_shardings(abstract_params(tc.read_policy_config(workdir)), mesh)
    config, params = tc.restore_trained_policy(workdir, which, shardings)
    run_config = {}
    path = os.path.join(workdir, "run_config.json")
    if os.path.isfile(path):
        with open(path) as f:
            run_config = json.load(f)
    model = run_config.get("model", {})
    policy_dir = model.get("policy_checkpoint") or ""
    tokenizer = load_tokenizer(policy_dir) if policy_dir and os.path.isdir(policy_dir) else load_tokenizer(workdir)
    sam2_path = model.get("sam2_checkpoint") or ""
    if not sam2_path or not os.path.exists(sam2_path):
        return Models(config, params, tokenizer, None, None)
    return Models(config, params, tokenizer, *load_sam2(sam2_path, model.get("sam2_preset"), mesh))


def load_tokenizer(policy_dir: str):
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    path = os.path.join(policy_dir, TOKENIZER_DIR)
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        return QwenTokenizer.from_file(path)
    return QwenTokenizer.default()


def _policy_shardings(directory: str, mesh):
    if mesh is None:
        return None
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VLConfig, abstract_params
    from segzero_jax.parallel import logical_shardings

    _, fields = checkpoint.load_model_config(directory)
    config = config_io.from_dict(Qwen2_5_VLConfig, fields, f"{directory}/{checkpoint.CONFIG_FILE}")
    return logical_shardings(abstract_params(config), mesh)


def _replicated(mesh):
    if mesh is None:
        return None
    from segzero_jax.parallel.sharding import replicated

    return lambda abstract: jax.tree.map(lambda _: replicated(mesh), abstract)


def load_policy(directory: str, mesh=None):
    """(config, params, tokenizer) of a policy model directory."""
    config, params = checkpoint.restore_policy(directory, _policy_shardings(directory, mesh))
    return config, params, load_tokenizer(directory)


def load_sam2(path: str, preset: Optional[str] = None, mesh=None):
    """(config, params) from a SAM2 model directory or Meta's `.pt` checkpoint."""
    if os.path.isdir(path):
        return checkpoint.restore_sam2(path, _replicated(mesh))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no SAM2 checkpoint at {path}")
    from segzero_jax.models.sam2 import load_checkpoint
    config, params = load_checkpoint(path, preset)
    if mesh is not None:
        params = jax.device_put(params, _replicated(mesh)(params))
    return config, params


def load_models(path: str, sam2: Optional[str] = None, sam2_preset: Optional[str] = None,
                step: Optional[str] = None, mesh=None, need_policy: bool = True) -> Models:
    """Policy, tokenizer and SAM2 from `path` (see the module docstring); `need_policy=False`
    accepts a SAM2-only source (for scoring given answers); the policy fields are then None."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    policy_dir = sam2_dir = None
    if _is_model_dir(path):
        kind = _kind(path)
        if kind == checkpoint.POLICY_KIND:
            policy_dir = path
        elif kind == checkpoint.SAM2_KIND:
            sam2_dir = path
        else:
            raise ValueError(f"{path} holds a {kind!r} model, expected a policy or SAM2")
    elif os.path.isdir(os.path.join(path, POLICY_DIR)) or os.path.isdir(os.path.join(path, SAM2_DIR)):
        policy_dir = os.path.join(path, POLICY_DIR) if os.path.isdir(os.path.join(path, POLICY_DIR)) else None
        sam2_dir = os.path.join(path, SAM2_DIR) if os.path.isdir(os.path.join(path, SAM2_DIR)) else None
    else:
        models = restore_training_workdir(path, step, mesh)
        if sam2 is None:
            if models.sam2_params is None:
                raise FileNotFoundError(f"the training run in {path} names no SAM2 checkpoint; pass --sam2 with "
                                        "a SAM2 model directory or Meta's .pt")
            return models
        return models._replace(**dict(zip(("sam2_config", "sam2_params"), load_sam2(sam2, sam2_preset, mesh))))
    if need_policy and policy_dir is None:
        raise FileNotFoundError(f"{path} holds no policy (expected {os.path.join(path, POLICY_DIR)} or a "
                                "policy model directory)")
    sam2_source = sam2 or sam2_dir
    if sam2_source is None:
        raise FileNotFoundError(f"{path} holds no SAM2 (expected {os.path.join(path, SAM2_DIR)}); pass --sam2 "
                                "with a SAM2 model directory or Meta's .pt")
    policy = load_policy(policy_dir, mesh) if policy_dir is not None else (None, None, None)
    return Models(*policy, *load_sam2(sam2_source, sam2_preset, mesh))
