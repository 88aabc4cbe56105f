"""HF safetensors <-> Flax params for Qwen2.5-VL, driven by the table in convert_rules.py.

The loader streams tensor by tensor (`safetensors.safe_open(framework="numpy")`, single file or sharded
with `model.safetensors.index.json`) into preallocated host buffers, so the checkpoint is
never held twice; export runs the same table backwards and writes shards + config.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional

import jax
import numpy as np
from safetensors.numpy import save_file

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, load_config, to_hf_dict
from segzero_jax.models.qwen2_5_vl.convert_rules import (DECODER, DECODER_LAYERS, EXPORT_PREFIXES, PREFIXES,
                                                        RULES, TRANSFORMS, Rule, canonical_name, match_rule)
from segzero_jax.models.qwen2_5_vl.language import layer_name
from segzero_jax.models.qwen2_5_vl.model import abstract_params, unstack_layers
from segzero_jax.models.tensor_files import open_safetensors

__all__ = ["load_checkpoint", "load_hf", "export_hf", "hf_tensors", "checkpoint_files", "RULES", "TRANSFORMS",
           "Rule", "canonical_name", "match_rule"]


def checkpoint_files(path: str) -> dict[str, list[str]]:
    """{safetensors file: [tensor names]} for a directory (sharded with index, or single files)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"HF checkpoint directory {path!r} does not exist")
    index = os.path.join(path, "model.safetensors.index.json")
    files: dict[str, list[str]] = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object")
        for name, file in weight_map.items():
            if os.path.basename(file) != file:
                raise ValueError(f"{index}: shard {file!r} for {name!r} is not a plain file name")
            files.setdefault(os.path.join(path, file), []).append(name)
    else:
        shards = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
        if not shards:
            raise FileNotFoundError(f"no *.safetensors or model.safetensors.index.json in {path!r}")
        for file in shards:
            with open_safetensors(os.path.join(path, file)) as f:
                files[os.path.join(path, file)] = list(f.keys())
    return files


def _get(tree: dict, path: str):
    for k in path.split("/"):
        if not isinstance(tree, dict) or k not in tree:
            raise KeyError(path)
        tree = tree[k]
    return tree


def _set(tree: dict, path: str, value) -> None:
    keys = path.split("/")
    for k in keys[:-1]:
        tree = tree.setdefault(k, {})
    tree[keys[-1]] = value


def load_checkpoint(path: str, config: Optional[Qwen2_5_VLConfig] = None, *, shardings: Any = None,
                    **config_overrides: Any) -> tuple[Qwen2_5_VLConfig, dict]:
    """Reads an HF Qwen2.5-VL directory -> (config, params); `config` defaults to its config.json.

    Params are numpy arrays in `config.param_dtype` (override e.g. `param_dtype="bfloat16"`),
    or, with `shardings` (a tree matching the params), jax arrays placed one param at a time.
    They take `config.scan_layers`' layout (`scan_layers=False` gives the unscanned decoding one).
    """
    config = config or load_config(path, **config_overrides)
    abstract = abstract_params(config.replace(scan_layers=True))
    dtype = np.dtype(config.weight_dtype)
    buffers: dict[str, np.ndarray] = {}
    filled: dict[str, set] = {}
    for file, names in checkpoint_files(path).items():
        with open_safetensors(file) as f:
            for name in names:
                try:
                    rule, layer = match_rule(canonical_name(name))
                except ValueError as e:
                    raise ValueError(f"{file}: tensor {name!r}: {e}") from None
                if rule.only_untied and config.tie_word_embeddings:
                    continue
                target = _get(abstract, rule.path)
                shape = tuple(target.shape[1:]) if rule.stacked else tuple(target.shape)
                raw = f.get_tensor(name)
                try:
                    x = TRANSFORMS[rule.transform].to_ours(raw, shape, rule, config)
                except ValueError:
                    x = None
                if x is None or tuple(x.shape) != shape:
                    raise ValueError(f"{file}: tensor {name!r} of shape {raw.shape} does not fit "
                                     f"{rule.path} of shape {shape} (config mismatch?)")
                buf = buffers.setdefault(rule.path, np.empty(target.shape, dtype))
                if rule.stacked:
                    if layer >= target.shape[0]:
                        raise ValueError(f"{name!r}: layer {layer} >= configured {target.shape[0]} layers")
                    buf[layer] = x
                else:
                    buf[...] = x
                filled.setdefault(rule.path, set()).add(layer)
    params: dict = {}
    for path_, leaf in _leaves(abstract):
        want = set(range(leaf.shape[0])) if _rule_for_path(path_).stacked else {None}
        missing = want - filled.get(path_, set())
        if missing:
            raise ValueError(f"checkpoint {path!r} lacks {_rule_for_path(path_).hf} "
                             f"for {sorted(missing, key=str)[:5]} (param {path_})")
        buf = buffers.pop(path_)
        if shardings is not None and config.scan_layers:
            buf = jax.device_put(buf, _get(shardings, path_))
        _set(params, path_, buf)
    if not config.scan_layers:
        params = unstack_layers(params)   # numpy views of the stacked buffers
        if shardings is not None:
            params = jax.tree.map(jax.device_put, params, shardings)
    return config, params


load_hf = load_checkpoint   # the earlier name


def _leaves(tree: dict, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k in sorted(tree):
        p = f"{prefix}/{k}" if prefix else k
        if isinstance(tree[k], dict):
            yield from _leaves(tree[k], p)
        else:
            yield p, tree[k]


def _rule_for_path(path: str) -> Rule:
    for rule in RULES:
        if rule.path == path:
            return rule
    raise ValueError(f"param {path!r} has no conversion rule")


def _rule_values(config: Qwen2_5_VLConfig, params: dict, rule: Rule) -> Iterator[tuple[Optional[int], Any]]:
    """(layer index or None, value) of a rule's param, per layer for a stacked one, in either
    decoder layout."""
    if not config.scan_layers and rule.path.startswith(DECODER_LAYERS + "/"):
        for i in range(config.text.num_layers):   # unscanned: language_model/decoder/layers_{i}/...
            yield i, _get(params, rule.path.replace(DECODER_LAYERS, f"{DECODER}/{layer_name(i)}", 1))
        return
    value = _get(params, rule.path)
    if not rule.stacked:
        yield None, value
        return
    for i in range(value.shape[0]):
        yield i, value[i]


def hf_tensors(config: Qwen2_5_VLConfig, params: dict, dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy tensor) one at a time, named as in the published checkpoints.
    `params` take `config.scan_layers`' layout."""
    for rule in RULES:
        if rule.only_untied and config.tie_word_embeddings:
            continue
        canon, rest = next((c, rule.hf[len(c):]) for c in PREFIXES if rule.hf.startswith(c))
        prefix = EXPORT_PREFIXES[canon]
        for i, value in _rule_values(config, params, rule):
            y = np.asarray(jax.device_get(value))
            if dtype is not None:
                y = y.astype(dtype)
            name = prefix + rest.replace("{i}", str(i))
            yield name, np.ascontiguousarray(TRANSFORMS[rule.transform].to_hf(y, rule, config))


def export_hf(config: Qwen2_5_VLConfig, params: dict, out_dir: str, *, dtype: Any = None,
              max_shard_bytes: int = 4 << 30) -> list[str]:
    """Writes safetensors shards (+ index when more than one) and config.json; returns the files.

    `dtype` (numpy dtype or name, e.g. "bfloat16") casts on the way out; default keeps the
    params' dtype. The result loads with `Qwen2_5_VLForConditionalGeneration.from_pretrained`.
    """
    import ml_dtypes
    params = params.get("params", params) if isinstance(params, dict) else params
    np_dtype = None if dtype is None else np.dtype(ml_dtypes.bfloat16 if str(dtype) == "bfloat16" else dtype)
    os.makedirs(out_dir, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = []
    current: dict[str, np.ndarray] = {}
    size = 0
    tmp_files: list[str] = []

    def flush():
        nonlocal current, size
        if current:
            file = os.path.join(out_dir, f".shard-{len(tmp_files):05d}.safetensors")
            save_file(current, file, metadata={"format": "pt"})
            tmp_files.append(file)
            shards.append({k: None for k in current})
            current, size = {}, 0

    out_dtype = None
    for name, tensor in hf_tensors(config, params, np_dtype):
        out_dtype = out_dtype or tensor.dtype
        if size and size + tensor.nbytes > max_shard_bytes:
            flush()
        current[name] = tensor
        size += tensor.nbytes
    flush()
    n = len(tmp_files)
    names = (["model.safetensors"] if n == 1
             else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
    for tmp, final in zip(tmp_files, names):
        os.replace(tmp, os.path.join(out_dir, final))
    if n > 1:
        weight_map = {k: names[i] for i, shard in enumerate(shards) for k in shard}
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
    torch_dtype = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}.get(str(out_dtype), "float32")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(to_hf_dict(config, torch_dtype=torch_dtype), f, indent=2)
    return [os.path.join(out_dir, x) for x in names]
