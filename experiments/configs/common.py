"""Shared experiment config: the Seg-Zero reference recipe as an `ml_collections.ConfigDict`,
and `validate`, which checks every field once at start-up and names the offending one.

Sections: `model` (policy + SAM2), `data` (the input pipeline's fields), `rl` (GRPO),
`optim` (AdamW), `mesh` (device mesh and logical-axis rules), `train` (loop, checkpoints).
Values follow the Seg-Zero paper and its single-object training script (the README's Configs section).
"""

from __future__ import annotations

import math
from typing import Any

import ml_collections

from segzero_jax.parallel import DEFAULT_RULES, MESH_AXES


class ConfigError(ValueError):
    """A config field holds an unusable value; the message starts with the field's path."""


def reference_config() -> ml_collections.ConfigDict:
    """Seg-Zero's recipe: Qwen2.5-VL-7B + SAM2-Large, RefCOCOg 9k, 16 prompts x 8 samples."""
    c = ml_collections.ConfigDict()
    c.model = dict(
        policy_preset="7b",               # segzero_jax.models.qwen2_5_vl.PRESETS
        policy_checkpoint="",             # model directory from experiments.convert ("" = random init)
        dtype="bfloat16",                 # matmul compute dtype
        param_dtype="float32",            # master weights
        remat_policy="full",              # layers.REMAT_POLICIES
        attention_impl="auto",
        sam2_preset="hiera_large",        # segzero_jax.models.sam2.PRESETS
        sam2_checkpoint="",
        # Stand-ins for pretrained models (no weights can be downloaded): a briefly trained
        # SAM2 and a policy warm-started on the answer format, built into WORKDIR/models.
        standins=False,
        freeze_vision=False,              # train the vision tower (Seg-Zero trains the whole policy)
    )
    c.data = dict(
        dataset="refcocog", split="train", data_dir="", manual_dir="",
        batch_size=16,                    # prompts per step (global)
        max_prompt_length=1300, image_size=840, seed=42, shuffle=True, num_epochs=1,
    )
    c.rl = dict(
        group_size=8, temperature=1.0, top_p=1.0, top_k=0, max_response_length=1300,
        reward="seg_strict",              # segzero_jax.rl.reward_host.HOST_REWARDS
        reward_max_bytes=0,               # device reward's byte budget per response (0: 8 per token)
        advantage_estimator="grpo",       # segzero_jax.rl.grpo.ADVANTAGE_ESTIMATORS
        policy_loss="ppo",                # segzero_jax.rl.grpo.POLICY_LOSSES (ppo | gspo)
        clip_ratio_low=0.2,               # ratio clipped to [1 - low, 1 + high] (DAPO: high 0.28)
        clip_ratio_high=0.2,
        kl_kind="low_var_kl",             # segzero_jax.rl.grpo.KL_PENALTIES
        kl_coef=5e-3,
        entropy_coef=1e-3,
        # segzero_jax.rl.grpo.AGGREGATIONS; Seg-Zero token-means each loss term over a
        # micro-batch of one response per GPU, so its step objective is seq-mean-token-mean
        loss_aggregation="seq-mean-token-mean",
        micro_batch_size=8,               # responses per gradient-accumulation step (global)
        update_batch_size=16,             # prompts per optimizer update (Seg-Zero's global_batch_size)
        ppo_epochs=1,
        skip_equal_reward_groups=False,   # DAPO: groups with equal rewards get zero weight
        overlong_buffer=0,                # DAPO's soft overlong penalty over the last N tokens (0: off)
        overlong_penalty=1.0,
        decode_layout="unscanned",        # segzero_jax.rl.sampler.DECODE_LAYOUTS
        logits_chunk_size=256,
    )
    c.optim = dict(learning_rate=1e-6, weight_decay=1e-2, b1=0.9, b2=0.999, eps=1e-8,
                   grad_clip_norm=1.0, warmup_steps=0)
    c.mesh = dict(shape=(-1, 1, 1), dcn_shape=None,
                  axis_rules=tuple((name, axes) for name, axes in DEFAULT_RULES))
    c.train = dict(num_steps=562, log_every=1, checkpoint_every=50, max_checkpoints=3,
                   eval_every=0, eval_split="validation", eval_num_samples=0, eval_batch_size=8,
                   eval_max_new_tokens=1024, samples_every=25, num_logged_samples=4,
                   max_nonfinite_steps=5, seed=0,
                   # evaluated before the first and after the last step into WORKDIR/eval/{warm_start,final}
                   final_eval_split="", final_eval_num_samples=0, num_report_overlays=4)
    return ml_collections.ConfigDict(c)


def _fail(field: str, message: str) -> None:
    raise ConfigError(f"config.{field}: {message}")


def _positive_int(c: Any, field: str) -> int:
    value = _get(c, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(field, f"must be a positive integer, got {value!r}")
    return value


def _in_range(c: Any, field: str, low: float, high: float) -> float:
    value = _get(c, field)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        _fail(field, f"must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def _choice(c: Any, field: str, choices: Any) -> str:
    value = _get(c, field)
    if value not in choices:
        _fail(field, f"{value!r} is not one of {sorted(choices)}")
    return value


def _get(c: Any, field: str) -> Any:
    node = c
    for part in field.split("."):
        if part not in node:
            _fail(field, "is missing")
        node = node[part]
    return node


def validate(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Checks every field the entry points read; raises ConfigError naming the first bad one."""
    from segzero_jax.models import layers, qwen2_5_vl, sam2
    from segzero_jax.models.qwen2_5_vl.config import DTYPES
    from segzero_jax.parallel.mesh import resolve_mesh_shape
    from segzero_jax.rl import grpo, reward_host

    _choice(c, "model.policy_preset", qwen2_5_vl.PRESETS)
    _choice(c, "model.dtype", DTYPES)
    _choice(c, "model.param_dtype", DTYPES)
    _choice(c, "model.remat_policy", layers.REMAT_POLICIES)
    _choice(c, "model.attention_impl", layers.ATTENTION_IMPLEMENTATIONS)
    _choice(c, "model.sam2_preset", sam2.PRESETS)
    _choice(c, "data.dataset", ("synthetic", "refcocog", "reasonseg"))
    from data_pipelines import input_pipeline
    try:
        input_pipeline.resolve_settings(c.data.to_dict())
    except ValueError as e:
        _fail("data", str(e))
    for field in ("rl.group_size", "rl.max_response_length", "rl.micro_batch_size",
                  "rl.update_batch_size", "rl.ppo_epochs", "rl.logits_chunk_size", "train.num_steps",
                  "train.log_every", "train.checkpoint_every", "train.max_checkpoints",
                  "train.eval_batch_size", "train.eval_max_new_tokens", "train.samples_every",
                  "train.max_nonfinite_steps"):
        _positive_int(c, field)
    for field in ("rl.top_k", "rl.reward_max_bytes", "rl.overlong_buffer", "train.eval_every",
                  "train.eval_num_samples", "train.num_logged_samples", "train.final_eval_num_samples",
                  "train.num_report_overlays"):
        value = _get(c, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(field, f"must be a non-negative integer, got {value!r}")
    for field in ("model.standins", "model.freeze_vision", "rl.skip_equal_reward_groups"):
        if not isinstance(_get(c, field), bool):
            _fail(field, f"must be true or false, got {_get(c, field)!r}")
    if c.data.image_size % 28:
        _fail("data.image_size", f"must be a multiple of 28 (Qwen2.5-VL merged patches), got {c.data.image_size}")
    _in_range(c, "rl.temperature", 1e-3, 10.0)
    _in_range(c, "rl.top_p", 1e-3, 1.0)
    _choice(c, "rl.reward", reward_host.HOST_REWARDS)
    _choice(c, "rl.advantage_estimator", grpo.ADVANTAGE_ESTIMATORS)
    _in_range(c, "rl.clip_ratio_low", 1e-6, 1.0)
    _in_range(c, "rl.clip_ratio_high", 1e-6, 10.0)
    from segzero_jax.rl import sampler
    _choice(c, "rl.policy_loss", grpo.POLICY_LOSSES)
    _choice(c, "rl.decode_layout", sampler.DECODE_LAYOUTS)
    _in_range(c, "rl.overlong_penalty", 0.0, 1e3)
    if c.rl.overlong_buffer >= c.rl.max_response_length:
        _fail("rl.overlong_buffer", f"{c.rl.overlong_buffer} must be below rl.max_response_length "
              f"({c.rl.max_response_length})")
    if c.data.batch_size % c.rl.update_batch_size:
        _fail("rl.update_batch_size", f"{c.rl.update_batch_size} does not divide the "
              f"{c.data.batch_size} prompts of a step (data.batch_size)")
    _choice(c, "rl.kl_kind", grpo.KL_PENALTIES)
    _in_range(c, "rl.kl_coef", 0.0, 1e3)
    _in_range(c, "rl.entropy_coef", 0.0, 1e3)
    _choice(c, "rl.loss_aggregation", grpo.AGGREGATIONS)
    responses = c.rl.update_batch_size * c.rl.group_size
    if responses % c.rl.micro_batch_size:
        _fail("rl.micro_batch_size", f"{c.rl.micro_batch_size} does not divide the "
              f"{responses} responses of an update (rl.update_batch_size x rl.group_size)")
    _in_range(c, "optim.learning_rate", 0.0, 1.0)
    _in_range(c, "optim.weight_decay", 0.0, 1.0)
    _in_range(c, "optim.b1", 0.0, 1.0)
    _in_range(c, "optim.b2", 0.0, 1.0)
    _in_range(c, "optim.grad_clip_norm", 0.0, math.inf)
    shape = tuple(_get(c, "mesh.shape"))
    if len(shape) != len(MESH_AXES):
        _fail("mesh.shape", f"needs one size per axis {MESH_AXES}, got {shape}")
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
        _fail("mesh.shape", f"sizes must be positive with at most one -1, got {shape}")
    try:
        resolve_mesh_shape(shape, math.prod(s for s in shape if s != -1))
    except ValueError as e:
        _fail("mesh.shape", str(e))
    rule_names = {name for name, _ in c.mesh.axis_rules}
    missing = sorted({name for name, _ in DEFAULT_RULES} - rule_names)
    if missing:
        _fail("mesh.axis_rules", f"no rule for logical axes {missing}")
    for name, axes in c.mesh.axis_rules:
        for axis in (axes if isinstance(axes, (tuple, list)) else (axes,)):
            if axis is not None and axis not in MESH_AXES:
                _fail("mesh.axis_rules", f"logical axis {name!r} maps to unknown mesh axis {axis!r}")
    return c
