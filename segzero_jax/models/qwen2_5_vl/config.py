"""Qwen2.5-VL configuration: frozen (hashable, jit-static) dataclasses, presets, HF config.json I/O.

`VisionConfig` describes the ViT tower, `TextConfig` the Qwen2 decoder, `Qwen2_5_VLConfig`
ties them together with the special token ids and the runtime choices (param/compute dtype,
remat policy, attention backend). `from_hf_dict` reads both the published flat config.json
layout (text fields at top level, `rope_scaling`) and the nested transformers-5 layout
(`text_config`, `rope_parameters`); `to_hf_dict` writes the flat layout.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

import jax.numpy as jnp

from segzero_jax.models.layers import ACTIVATIONS, ATTENTION_IMPLEMENTATIONS, REMAT_POLICIES

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    out_hidden_size: int = 2048
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    hidden_act: str = "silu"
    rope_theta: float = 10000.0
    tokens_per_second: int = 2
    rms_norm_eps: float = 1e-6

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.temporal_patch_size * self.patch_size ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 11008
    num_layers: int = 36
    num_heads: int = 16
    num_kv_heads: int = 2
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    hidden_act: str = "silu"
    max_position_embeddings: int = 128000

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class Qwen2_5_VLConfig:
    vision: VisionConfig = VisionConfig()
    text: TextConfig = TextConfig()
    tie_word_embeddings: bool = True
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    bos_token_id: int = 151643
    eos_token_id: int = 151645
    dtype: str = "float32"          # compute dtype of matmuls
    param_dtype: str = "float32"    # storage dtype of params
    remat_policy: str = "none"      # key of layers.REMAT_POLICIES
    attention_impl: str = "auto"    # "auto" | "xla" | "cudnn"
    # Decoder layers under one nn.scan, params stacked `[L, ...]` and the KV cache one `[L, B, S,
    # K, H]` array (the training layout, one compiled layer), or as L layers of their own, params
    # `layers_0 ... layers_{L-1}` and the cache L arrays `[B, S, K, H]` (the decoding layout: a
    # scanned GPU decode step copies every layer's weights and cache slice out of the stacks
    # before cuBLAS and cuDNN read them). `unstack_layers` / `stack_layers` convert params.
    scan_layers: bool = True

    def __post_init__(self):
        validate(self)

    @property
    def compute_dtype(self):
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self):
        return DTYPES[self.param_dtype]

    def replace(self, **kw: Any) -> "Qwen2_5_VLConfig":
        return dataclasses.replace(self, **kw)


def _check(ok: bool, field: str, msg: str) -> None:
    if not ok:
        raise ValueError(f"Qwen2_5_VLConfig.{field}: {msg}")


def validate(c: Qwen2_5_VLConfig) -> None:
    """Raises ValueError naming the first inconsistent field."""
    v, t = c.vision, c.text
    _check(c.dtype in DTYPES, "dtype", f"{c.dtype!r} not in {sorted(DTYPES)}")
    _check(c.param_dtype in DTYPES, "param_dtype", f"{c.param_dtype!r} not in {sorted(DTYPES)}")
    _check(c.remat_policy in REMAT_POLICIES, "remat_policy",
           f"{c.remat_policy!r} not in {sorted(REMAT_POLICIES)}")
    _check(c.attention_impl in ATTENTION_IMPLEMENTATIONS, "attention_impl",
           f"{c.attention_impl!r} not in {ATTENTION_IMPLEMENTATIONS}")
    _check(isinstance(c.scan_layers, bool), "scan_layers", f"{c.scan_layers!r} is not a bool")
    _check(t.hidden_size % t.num_heads == 0, "text.hidden_size",
           f"{t.hidden_size} not divisible by num_heads {t.num_heads}")
    _check(t.num_heads % t.num_kv_heads == 0, "text.num_kv_heads",
           f"num_heads {t.num_heads} not divisible by num_kv_heads {t.num_kv_heads}")
    _check(2 * sum(t.mrope_section) == t.head_dim, "text.mrope_section",
           f"{t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
    _check(len(t.mrope_section) == 3, "text.mrope_section", "needs 3 sections (t, h, w)")
    _check(v.hidden_size % v.num_heads == 0, "vision.hidden_size",
           f"{v.hidden_size} not divisible by num_heads {v.num_heads}")
    _check(v.head_dim % 4 == 0, "vision.num_heads", f"vision head_dim {v.head_dim} must be a multiple of 4")
    _check(all(0 <= i < v.depth for i in v.fullatt_block_indexes), "vision.fullatt_block_indexes",
           f"{v.fullatt_block_indexes} must lie in [0, depth={v.depth})")
    _check(v.window_size % (v.patch_size * v.spatial_merge_size) == 0, "vision.window_size",
           f"{v.window_size} must be a multiple of patch_size*spatial_merge_size")
    _check(v.out_hidden_size == t.hidden_size, "vision.out_hidden_size",
           f"{v.out_hidden_size} must equal text.hidden_size {t.hidden_size}")
    for field, act in (("vision.hidden_act", v.hidden_act), ("text.hidden_act", t.hidden_act)):
        _check(act in ACTIVATIONS, field, f"{act!r} not in {sorted(ACTIVATIONS)}")


# Published Qwen2.5-VL-{3B,7B}-Instruct config.json values.
PRESETS: dict[str, Qwen2_5_VLConfig] = {
    "3b": Qwen2_5_VLConfig(
        vision=VisionConfig(out_hidden_size=2048),
        text=TextConfig(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_layers=36,
                        num_heads=16, num_kv_heads=2),
        tie_word_embeddings=True),
    "7b": Qwen2_5_VLConfig(
        vision=VisionConfig(out_hidden_size=3584),
        text=TextConfig(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_layers=28,
                        num_heads=28, num_kv_heads=4),
        tie_word_embeddings=False),
    # Tests and CPU benchmarks: vision depth 4 with a full-attention block inside.
    "tiny": Qwen2_5_VLConfig(
        vision=VisionConfig(depth=4, hidden_size=32, intermediate_size=48, num_heads=2,
                            out_hidden_size=64, fullatt_block_indexes=(1,)),
        text=TextConfig(vocab_size=151936, hidden_size=64, intermediate_size=96, num_layers=2,
                        num_heads=4, num_kv_heads=2, mrope_section=(2, 3, 3)),
        tie_word_embeddings=True),
}


def get_preset(name: str, **overrides: Any) -> Qwen2_5_VLConfig:
    """The preset `name` of `PRESETS` with field overrides applied."""
    if name not in PRESETS:
        raise ValueError(f"unknown Qwen2.5-VL preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)


preset = get_preset   # the earlier name


def _first(dicts: list[dict], key: str, default: Any) -> Any:
    for d in dicts:
        if d is not None and d.get(key) is not None:
            return d[key]
    return default


def from_hf_dict(d: dict, **overrides: Any) -> Qwen2_5_VLConfig:
    """Our config from a transformers `Qwen2_5_VLConfig` dict (flat published or nested v5 layout)."""
    if d.get("model_type") not in (None, "qwen2_5_vl"):
        raise ValueError(f"config.json model_type is {d.get('model_type')!r}, expected 'qwen2_5_vl'")
    text = d.get("text_config") or {}
    vis = d.get("vision_config") or {}
    look = [text, d]
    rope = _first(look, "rope_parameters", None) or _first(look, "rope_scaling", None) or {}
    vrope = vis.get("rope_parameters") or {}
    dv, dt = VisionConfig(), TextConfig()
    vision = VisionConfig(
        depth=vis.get("depth", dv.depth), hidden_size=vis.get("hidden_size", dv.hidden_size),
        intermediate_size=vis.get("intermediate_size", dv.intermediate_size),
        num_heads=vis.get("num_heads", dv.num_heads),
        in_channels=vis.get("in_channels", vis.get("in_chans", dv.in_channels)),
        patch_size=vis.get("patch_size", dv.patch_size),
        temporal_patch_size=vis.get("temporal_patch_size", dv.temporal_patch_size),
        spatial_merge_size=vis.get("spatial_merge_size", dv.spatial_merge_size),
        window_size=vis.get("window_size", dv.window_size),
        out_hidden_size=vis.get("out_hidden_size", dv.out_hidden_size),
        fullatt_block_indexes=tuple(vis.get("fullatt_block_indexes", dv.fullatt_block_indexes)),
        hidden_act=vis.get("hidden_act", dv.hidden_act),
        rope_theta=float(vrope.get("rope_theta", dv.rope_theta)),
        tokens_per_second=vis.get("tokens_per_second", dv.tokens_per_second))
    txt = TextConfig(
        vocab_size=_first(look, "vocab_size", dt.vocab_size),
        hidden_size=_first(look, "hidden_size", dt.hidden_size),
        intermediate_size=_first(look, "intermediate_size", dt.intermediate_size),
        num_layers=_first(look, "num_hidden_layers", dt.num_layers),
        num_heads=_first(look, "num_attention_heads", dt.num_heads),
        num_kv_heads=_first(look, "num_key_value_heads", None) or _first(look, "num_attention_heads", dt.num_heads),
        rms_norm_eps=float(_first(look, "rms_norm_eps", dt.rms_norm_eps)),
        rope_theta=float(rope.get("rope_theta", _first(look, "rope_theta", dt.rope_theta))),
        mrope_section=tuple(rope.get("mrope_section", dt.mrope_section)),
        hidden_act=_first(look, "hidden_act", dt.hidden_act),
        max_position_embeddings=_first(look, "max_position_embeddings", dt.max_position_embeddings))
    if _first(look, "use_sliding_window", False):
        raise ValueError("config.json use_sliding_window=true is not supported (Qwen2.5-VL ships false)")
    tie = bool(d.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False))
    ids = {k: d[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                             "vision_end_token_id") if k in d}
    for k in ("bos_token_id", "eos_token_id"):
        val = _first(look, k, None)
        if isinstance(val, int):
            ids[k] = val
    return Qwen2_5_VLConfig(vision=vision, text=txt, tie_word_embeddings=tie, **ids, **overrides)


def to_hf_dict(c: Qwen2_5_VLConfig, torch_dtype: Optional[str] = None) -> dict:
    """The flat published config.json layout that transformers' `Qwen2_5_VLConfig` reads."""
    v, t = c.vision, c.text
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "attention_dropout": 0.0,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id,
        "vision_start_token_id": c.vision_start_token_id, "vision_end_token_id": c.vision_end_token_id,
        "image_token_id": c.image_token_id, "video_token_id": c.video_token_id,
        "hidden_act": t.hidden_act, "hidden_size": t.hidden_size,
        "intermediate_size": t.intermediate_size, "initializer_range": 0.02,
        "max_position_embeddings": t.max_position_embeddings,
        "num_attention_heads": t.num_heads, "num_hidden_layers": t.num_layers,
        "num_key_value_heads": t.num_kv_heads, "rms_norm_eps": t.rms_norm_eps,
        "rope_theta": t.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(t.mrope_section)},
        "use_sliding_window": False, "tie_word_embeddings": c.tie_word_embeddings,
        "vocab_size": t.vocab_size, "torch_dtype": torch_dtype or c.param_dtype,
        "vision_config": {
            "depth": v.depth, "hidden_act": v.hidden_act, "hidden_size": v.hidden_size,
            "intermediate_size": v.intermediate_size, "num_heads": v.num_heads,
            "in_chans": v.in_channels, "in_channels": v.in_channels,
            "out_hidden_size": v.out_hidden_size, "patch_size": v.patch_size,
            "spatial_merge_size": v.spatial_merge_size, "spatial_patch_size": v.patch_size,
            "window_size": v.window_size, "fullatt_block_indexes": list(v.fullatt_block_indexes),
            "tokens_per_second": v.tokens_per_second, "temporal_patch_size": v.temporal_patch_size,
        },
    }


def load_config(path: str, **overrides: Any) -> Qwen2_5_VLConfig:
    """Reads `<dir>/config.json` (or a path to the file) into our config."""
    file = os.path.join(path, "config.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"no Qwen2.5-VL config.json at {file}")
    with open(file) as f:
        return from_hf_dict(json.load(f), **overrides)
