"""Qwen2.5-VL policy in Flax linen: config/presets, model, KV cache, HF safetensors converter.

Public API (the same pattern as `segzero_jax.models.sam2`):
  get_preset(name, **overrides), PRESETS                 configs ("3b", "7b", "tiny")
  load_checkpoint(hf_dir, config=None, *, shardings=None, **overrides) -> (config, params)
  export_hf(config, params, out_dir)                      back to HF safetensors
  Qwen2_5_VL(config) (linen module), init_cache, vision_layout
`preset` and `load_hf` are the earlier names of `get_preset` and `load_checkpoint`.
"""

from segzero_jax.models.qwen2_5_vl.config import (PRESETS, Qwen2_5_VLConfig, TextConfig,
                                                  VisionConfig, from_hf_dict, get_preset, load_config,
                                                  preset, to_hf_dict)
from segzero_jax.models.qwen2_5_vl.convert import export_hf, load_checkpoint, load_hf
from segzero_jax.models.qwen2_5_vl.cache import cache_capacity, cache_logical_axes, group_cache, init_cache
from segzero_jax.models.qwen2_5_vl.model import (Qwen2_5_VL, abstract_params, dummy_inputs, init_params,
                                                 stack_layers, unstack_layers)
from segzero_jax.models.qwen2_5_vl.rope import get_rope_index
from segzero_jax.models.qwen2_5_vl.vision_layout import vision_layout

__all__ = ["PRESETS", "Qwen2_5_VLConfig", "TextConfig", "VisionConfig", "from_hf_dict", "get_preset",
           "load_config", "preset", "to_hf_dict", "export_hf", "load_checkpoint", "load_hf", "Qwen2_5_VL",
           "abstract_params", "cache_capacity", "cache_logical_axes", "dummy_inputs", "group_cache", "init_cache",
           "init_params", "get_rope_index", "stack_layers", "unstack_layers", "vision_layout"]
