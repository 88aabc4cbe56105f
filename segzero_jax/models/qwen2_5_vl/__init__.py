"""Qwen2.5-VL policy in Flax linen: config/presets, model, KV cache, HF safetensors converter."""

from segzero_jax.models.qwen2_5_vl.config import (PRESETS, Qwen2_5_VLConfig, TextConfig,
                                                  VisionConfig, from_hf_dict, load_config, preset,
                                                  to_hf_dict)
from segzero_jax.models.qwen2_5_vl.convert import export_hf, load_hf
from segzero_jax.models.qwen2_5_vl.cache import cache_capacity, cache_logical_axes, group_cache, init_cache
from segzero_jax.models.qwen2_5_vl.model import (Qwen2_5_VL, abstract_params, dummy_inputs, init_params,
                                                 stack_layers, unstack_layers)
from segzero_jax.models.qwen2_5_vl.rope import get_rope_index
from segzero_jax.models.qwen2_5_vl.vision_layout import vision_layout

__all__ = ["PRESETS", "Qwen2_5_VLConfig", "TextConfig", "VisionConfig", "from_hf_dict", "load_config",
           "preset", "to_hf_dict", "export_hf", "load_hf", "Qwen2_5_VL", "abstract_params",
           "cache_capacity", "cache_logical_axes", "dummy_inputs", "group_cache", "init_cache", "init_params",
           "get_rope_index", "stack_layers", "unstack_layers", "vision_layout"]
