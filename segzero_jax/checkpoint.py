"""Orbax save/restore for parameter trees and self-describing model directories.

A model directory (what `experiments.convert` writes and evaluation restores) holds

    DIR/config.json   {"kind": "qwen2_5_vl" | "sam2", "config": {...}}
    DIR/params/       an Orbax (OCDBT/TensorStore) tree of arrays

Restores go straight into a requested sharding (`shardings`: a tree of `jax.sharding.Sharding`
matching the params, or a callable from the abstract tree to one), so a 7B policy is never
assembled on one device. Without `shardings` every array lands on the default device.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Optional, Union

import jax
import orbax.checkpoint as ocp

from segzero_jax import config_io

POLICY_KIND = "qwen2_5_vl"
SAM2_KIND = "sam2"
PARAMS_DIR = "params"
CONFIG_FILE = "config.json"
Shardings = Union[Any, Callable[[Any], Any], None]


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be read: damaged, incomplete or of another kind."""


def save_params(path: str, params: Any) -> None:
    """Writes `params` (any pytree of arrays, possibly sharded across hosts) to `path`."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        raise FileExistsError(f"refusing to overwrite the existing checkpoint at {path}")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, params)
    checkpointer.wait_until_finished()


def abstract_params(path: str) -> Any:
    """The saved tree as `jax.ShapeDtypeStruct`s (shapes and dtypes, no data read)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no parameter checkpoint at {path}")
    try:
        metadata = ocp.StandardCheckpointer().metadata(path)
    except Exception as e:  # orbax/tensorstore raise many kinds; name the directory
        raise CheckpointError(f"{path}: cannot read the checkpoint's metadata ({type(e).__name__}: {e})") from e
    tree = getattr(getattr(metadata, "item_metadata", None), "tree", None)
    if tree is None:
        raise CheckpointError(f"{path}: no readable parameter tree (a damaged or incomplete checkpoint, "
                              "or not an Orbax parameter checkpoint)")
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), tree)


def restore_params(path: str, shardings: Shardings = None) -> Any:
    """Reads the tree at `path` into `shardings` (see module docstring)."""
    abstract = abstract_params(path)
    if callable(shardings):
        shardings = shardings(abstract)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        shardings = jax.tree.map(lambda _: device, abstract)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    try:
        return ocp.StandardCheckpointer().restore(os.path.abspath(path), target)
    except Exception as e:
        raise CheckpointError(f"{os.path.abspath(path)}: reading the arrays failed "
                              f"({type(e).__name__}: {str(e)[:500]})") from e


def _config_dict(config: Any) -> dict:
    if isinstance(config, dict):
        return dict(config)
    return config_io.to_dict(config)


def save_model(directory: str, kind: str, config: Any, params: Any) -> None:
    """Writes a model directory: `config.json` (kind + config fields) and `params/`."""
    os.makedirs(directory, exist_ok=True)
    save_params(os.path.join(directory, PARAMS_DIR), params)
    if jax.process_index() == 0:
        with open(os.path.join(directory, CONFIG_FILE), "w") as f:
            json.dump({"kind": kind, "config": _config_dict(config)}, f, indent=2, sort_keys=True)


def load_model_config(directory: str) -> tuple[str, dict]:
    """(kind, config fields) of a model directory."""
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} is missing: {directory} is not a model directory "
                                "written by experiments.convert")
    with open(config_path) as f:
        blob = json.load(f)
    if not isinstance(blob, dict) or "kind" not in blob or not isinstance(blob.get("config"), dict):
        raise ValueError(f"{config_path} must hold an object with 'kind' and 'config' fields")
    return blob["kind"], blob["config"]


def restore_model(directory: str, shardings: Shardings = None,
                  expected_kind: Optional[str] = None) -> tuple[str, dict, Any]:
    """(kind, config fields, params) of a model directory."""
    kind, config = _model_config(directory, expected_kind)
    return kind, config, restore_params(os.path.join(directory, PARAMS_DIR), shardings)


def _model_config(directory: str, expected_kind: Optional[str]) -> tuple[str, dict]:
    kind, config = load_model_config(directory)
    if expected_kind is not None and kind != expected_kind:
        raise ValueError(f"{directory} holds a {kind!r} model, expected {expected_kind!r}")
    return kind, config


def _restore_typed(directory: str, shardings: Shardings, kind: str, config_class: type):
    """(config, params) of a model directory; the config is checked before any weight is read."""
    _, fields = _model_config(directory, kind)
    config = config_io.from_dict(config_class, fields, f"{directory}/{CONFIG_FILE}")
    return config, restore_params(os.path.join(directory, PARAMS_DIR), shardings)


def restore_policy(directory: str, shardings: Shardings = None):
    """(Qwen2_5_VLConfig, params) from a policy model directory."""
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VLConfig
    return _restore_typed(directory, shardings, POLICY_KIND, Qwen2_5_VLConfig)


def restore_sam2(directory: str, shardings: Shardings = None):
    """(Sam2Config, params) from a SAM2 model directory."""
    from segzero_jax.models.sam2 import Sam2Config
    return _restore_typed(directory, shardings, SAM2_KIND, Sam2Config)
