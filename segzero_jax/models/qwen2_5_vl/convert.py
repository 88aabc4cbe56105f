"""HF safetensors <-> Flax params for Qwen2.5-VL, driven by one declarative table.

Each `Rule` names an HF tensor (template with `{i}` for a layer index, written with the
canonical prefixes `vision.` / `lm.` / `lm_head.`), the param path in our tree (a stacked
"layers" axis when the template has `{i}`) and a transform from the `TRANSFORMS` registry:
  copy     same shape (norm scales, embedding)
  flatten  HF 1-D vector <-> our `[.., N, H]`-style reshaped bias
  linear   torch `[out, in]` weight <-> our kernel `[in dims..., out dims...]` (transpose +
           reshape; `in_dims` leading dims of ours form HF's `in`)
  conv     Conv3d patch kernel `[D, C, Tp, P, P]` <-> `[C*Tp*P*P, D]`
The loader streams tensor by tensor (`safe_open(framework="numpy")`, single file or sharded
with `model.safetensors.index.json`) into preallocated host buffers, so the checkpoint is
never held twice; export runs the same table backwards and writes shards + config.json.
Published checkpoints (and transformers' save_pretrained) name tensors `model.layers.*` /
`visual.*`; transformers 5 modules hold `model.language_model.*` / `model.visual.*`: both
are read, the former is written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig, load_config, to_hf_dict
from segzero_jax.models.qwen2_5_vl.model import abstract_params

# canonical prefix -> checkpoint prefixes it is read from (most specific first; vision before lm).
PREFIXES = {
    "vision.": ("model.visual.", "visual."),
    "lm.": ("model.language_model.", "model."),
    "lm_head.": ("lm_head.",),
}
# What export writes: the published checkpoints' names (transformers' save_pretrained writes them too).
EXPORT_PREFIXES = {"vision.": "visual.", "lm.": "model.", "lm_head.": "lm_head."}


@dataclasses.dataclass(frozen=True)
class Rule:
    hf: str                 # canonical HF name, `{i}` = layer index
    path: str               # our param path, "/"-separated
    transform: str          # key of TRANSFORMS
    in_dims: int = 1        # for "linear": how many leading dims of our kernel are HF's `in`
    only_untied: bool = False

    @property
    def stacked(self) -> bool:
        return "{i}" in self.hf

    @property
    def pattern(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(\d+)") + "$")


_VB, _LB = "visual/blocks/block", "language_model/decoder/layers/layer"
RULES: tuple[Rule, ...] = (
    Rule("vision.patch_embed.proj.weight", "visual/patch_embed/kernel", "conv"),
    Rule("vision.blocks.{i}.norm1.weight", f"{_VB}/norm1/scale", "copy"),
    Rule("vision.blocks.{i}.norm2.weight", f"{_VB}/norm2/scale", "copy"),
    Rule("vision.blocks.{i}.attn.qkv.weight", f"{_VB}/qkv/kernel", "linear"),
    Rule("vision.blocks.{i}.attn.qkv.bias", f"{_VB}/qkv/bias", "flatten"),
    Rule("vision.blocks.{i}.attn.proj.weight", f"{_VB}/proj/kernel", "linear", in_dims=2),
    Rule("vision.blocks.{i}.attn.proj.bias", f"{_VB}/proj/bias", "copy"),
    *(Rule(f"vision.blocks.{{i}}.mlp.{n}_proj.{kind}", f"{_VB}/mlp/{n}/{our}",
           "linear" if kind == "weight" else "copy")
      for n in ("gate", "up", "down") for kind, our in (("weight", "kernel"), ("bias", "bias"))),
    Rule("vision.merger.ln_q.weight", "visual/merger/norm/scale", "copy"),
    Rule("vision.merger.mlp.0.weight", "visual/merger/fc1/kernel", "linear"),
    Rule("vision.merger.mlp.0.bias", "visual/merger/fc1/bias", "copy"),
    Rule("vision.merger.mlp.2.weight", "visual/merger/fc2/kernel", "linear"),
    Rule("vision.merger.mlp.2.bias", "visual/merger/fc2/bias", "copy"),
    Rule("lm.embed_tokens.weight", "language_model/embedding", "copy"),
    *(Rule(f"lm.layers.{{i}}.self_attn.{n}_proj.weight", f"{_LB}/{n}/kernel", "linear")
      for n in ("q", "k", "v")),
    *(Rule(f"lm.layers.{{i}}.self_attn.{n}_proj.bias", f"{_LB}/{n}/bias", "flatten")
      for n in ("q", "k", "v")),
    Rule("lm.layers.{i}.self_attn.o_proj.weight", f"{_LB}/o/kernel", "linear", in_dims=2),
    *(Rule(f"lm.layers.{{i}}.mlp.{n}_proj.weight", f"{_LB}/mlp/{n}/kernel", "linear")
      for n in ("gate", "up", "down")),
    Rule("lm.layers.{i}.input_layernorm.weight", f"{_LB}/input_norm/scale", "copy"),
    Rule("lm.layers.{i}.post_attention_layernorm.weight", f"{_LB}/post_attention_norm/scale", "copy"),
    Rule("lm.norm.weight", "language_model/norm/scale", "copy"),
    Rule("lm_head.weight", "language_model/lm_head", "linear", only_untied=True),
)


@dataclasses.dataclass(frozen=True)
class Transform:
    to_ours: Callable[[np.ndarray, tuple, Rule, Qwen2_5_VLConfig], np.ndarray]
    to_hf: Callable[[np.ndarray, Rule, Qwen2_5_VLConfig], np.ndarray]


def _conv_to_hf(y, rule, c):
    v = c.vision
    return y.T.reshape(v.hidden_size, v.in_channels, v.temporal_patch_size, v.patch_size, v.patch_size)


TRANSFORMS: dict[str, Transform] = {
    "copy": Transform(lambda x, shape, r, c: x, lambda y, r, c: y),
    "flatten": Transform(lambda x, shape, r, c: x.reshape(shape), lambda y, r, c: y.reshape(-1)),
    "linear": Transform(lambda x, shape, r, c: x.T.reshape(shape),
                        lambda y, r, c: y.reshape(int(np.prod(y.shape[:r.in_dims])), -1).T),
    "conv": Transform(lambda x, shape, r, c: x.reshape(x.shape[0], -1).T.reshape(shape), _conv_to_hf),
}


def canonical_name(name: str) -> str:
    """Checkpoint tensor name -> canonical (`vision.` / `lm.` / `lm_head.`) name."""
    for canon, prefixes in PREFIXES.items():
        for p in prefixes:
            if name.startswith(p):
                return canon + name[len(p):]
    return name


def match_rule(name: str) -> tuple[Rule, Optional[int]]:
    """(rule, layer index or None) for a canonical name; ValueError if no rule covers it."""
    for rule in RULES:
        m = rule.pattern.match(name)
        if m:
            return rule, (int(m.group(1)) if rule.stacked else None)
    raise ValueError(f"no conversion rule for checkpoint tensor {name!r}")


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
            with safe_open(os.path.join(path, file), framework="numpy") as f:
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


def load_hf(path: str, *, shardings: Any = None, config: Optional[Qwen2_5_VLConfig] = None,
            **config_overrides: Any) -> tuple[Qwen2_5_VLConfig, dict]:
    """Reads an HF Qwen2.5-VL directory -> (config, params).

    Params are numpy arrays in `config.param_dtype` (override e.g. `param_dtype="bfloat16"`),
    or, with `shardings` (a tree matching the params), jax arrays placed one param at a time.
    """
    config = config or load_config(path, **config_overrides)
    abstract = abstract_params(config)
    dtype = np.dtype(config.weight_dtype)
    buffers: dict[str, np.ndarray] = {}
    filled: dict[str, set] = {}
    for file, names in checkpoint_files(path).items():
        with safe_open(file, framework="numpy") as f:
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
        if shardings is not None:
            buf = jax.device_put(buf, _get(shardings, path_))
        _set(params, path_, buf)
    return config, params


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


def hf_tensors(config: Qwen2_5_VLConfig, params: dict, dtype: Any = None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, numpy tensor) one at a time, named as in the published checkpoints."""
    for rule in RULES:
        if rule.only_untied and config.tie_word_embeddings:
            continue
        value = _get(params, rule.path)
        canon, rest = next((c, rule.hf[len(c):]) for c in PREFIXES if rule.hf.startswith(c))
        prefix = EXPORT_PREFIXES[canon]
        layers = range(value.shape[0]) if rule.stacked else [None]
        for i in layers:
            y = np.asarray(jax.device_get(value[i] if i is not None else value))
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
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    params = params.get("params", params) if isinstance(params, dict) else params
    np_dtype = None if dtype is None else np.dtype(dtype)
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
