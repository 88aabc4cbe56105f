"""The declarative HF <-> Flax conversion table of Qwen2.5-VL.

Each `Rule` names an HF tensor (template with `{i}` for a layer index, written with the
canonical prefixes `vision.` / `lm.` / `lm_head.`), the param path in our tree (a stacked
"layers" axis when the template has `{i}`) and a transform from the `TRANSFORMS` registry:
  copy     same shape (norm scales, embedding)
  flatten  HF 1-D vector <-> our `[.., N, H]`-style reshaped bias
  linear   torch `[out, in]` weight <-> our kernel `[in dims..., out dims...]` (transpose +
           reshape; `in_dims` leading dims of ours form HF's `in`)
  conv     Conv3d patch kernel `[D, C, Tp, P, P]` <-> `[C*Tp*P*P, D]`
Published checkpoints (and transformers' save_pretrained) name tensors `model.layers.*` /
`visual.*`; transformers 5 modules hold `model.language_model.*` / `model.visual.*`: both
are read, the former is written.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Optional

import numpy as np

from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig

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


DECODER = "language_model/decoder"
DECODER_LAYERS = f"{DECODER}/layers/layer"   # the scanned decoder's stacked layer params
_VB, _LB = "visual/blocks/block", DECODER_LAYERS
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
