"""The policy stand-in: a small Qwen2.5-VL warm-started by supervised fine-tuning on the answer format.

    metrics = warm_start_policy(train, val, out_dir, WarmStartSettings(steps=150))

Each step draws `batch_size` prompts of `train` (a `PolicyExamples`; an epoch's order from the
seed), makes each a fresh target (`answers.warm_start_target`: a decoy object or a jittered,
quantised box; the example's reasoning text) followed by `<|im_end|>`, and minimises the
token-mean cross-entropy of the target tokens,

    L = -sum_{b,r} m[b,r] log p(y[b,r] | prompt_b, y[b,<r]) / sum_{b,r} m[b,r]

with `Qwen2_5_VL.response_log_probs` on prompt (left-padded) + target (right-padded to
`response_tokens`), AdamW (warmup then cosine decay, global-norm clipping), in one jitted step.
Prompts are cut to the longest prompt of the split (dropping columns that pad every row changes
nothing: positions come from the attention mask). `evaluate_policy` decodes greedily and scores the
answers with Seg-Zero's host reward. The model directory is written with `checkpoint.save_model`.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segzero_jax import checkpoint
from segzero_jax.models import qwen2_5_vl
from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig
from segzero_jax.rl import reward_host
from segzero_jax.standins.answers import TargetMix, format_answer, warm_start_target
from segzero_jax.standins.examples import PolicyExamples
from segzero_jax.standins.greedy import greedy_decode


@dataclasses.dataclass(frozen=True)
class WarmStartSettings:
    steps: int = 150
    batch_size: int = 8
    learning_rate: float = 1e-2
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip_norm: float = 1.0
    seed: int = 0
    response_tokens: int = 48          # R >= target + <|im_end|> (47 tokens on synthetic data), right-padded
    mix: TargetMix = TargetMix()
    preset: str = "tiny"               # segzero_jax.models.qwen2_5_vl.PRESETS
    dtype: str = "float32"
    eval_max_new_tokens: int = 64
    eval_batch_size: int = 50
    reward: str = "seg_strict"         # segzero_jax.rl.reward_host.HOST_REWARDS

    def __post_init__(self):
        for field in ("steps", "batch_size", "response_tokens", "eval_max_new_tokens", "eval_batch_size"):
            if int(getattr(self, field)) <= 0:
                raise ValueError(f"WarmStartSettings.{field} must be positive, got {getattr(self, field)}")
        if self.reward not in reward_host.HOST_REWARDS:
            raise ValueError(f"WarmStartSettings.reward={self.reward!r} is not one of {sorted(reward_host.HOST_REWARDS)}")


def policy_config(settings: WarmStartSettings) -> Qwen2_5_VLConfig:
    return qwen2_5_vl.preset(settings.preset, dtype=settings.dtype, param_dtype="float32", remat_policy="none")


def trim_prompts(examples: PolicyExamples) -> tuple[np.ndarray, np.ndarray]:
    """input_ids / attention_mask without the columns that are padding in every row."""
    keep = int(np.asarray(examples.attention_mask).sum(axis=1).max())
    return (np.asarray(examples.input_ids, np.int32)[:, -keep:],
            np.asarray(examples.attention_mask, np.int32)[:, -keep:])


def encode_targets(tokenizer, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Target texts + `<|im_end|>` -> (ids int32[n, length] right-padded, mask int32[n, length])."""
    end = tokenizer.eos_ids[0]
    ids = np.full((len(texts), length), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(texts), length), np.int32)
    for i, text in enumerate(texts):
        row = tokenizer.encode(text) + [end]
        if len(row) > length:
            raise ValueError(f"warm-start target of {len(row)} tokens is longer than response_tokens={length}: "
                             f"{text!r}")
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


def sft_loss(config: Qwen2_5_VLConfig, grid: np.ndarray, params, batch: dict) -> jax.Array:
    """Token-mean cross-entropy of the targets (see the module docstring)."""
    r = batch["target_ids"].shape[1]
    ids = jnp.concatenate([batch["input_ids"], batch["target_ids"]], axis=1)
    mask = jnp.concatenate([batch["attention_mask"], batch["target_mask"]], axis=1)
    logp, _ = Qwen2_5_VL(config).apply({"params": params}, ids, batch["pixel_values"], grid, mask,
                                       num_targets=r, method=Qwen2_5_VL.response_log_probs)
    m = batch["target_mask"].astype(jnp.float32)
    return -jnp.sum(logp * m) / jnp.maximum(jnp.sum(m), 1.0)


def make_optimizer(settings: WarmStartSettings) -> optax.GradientTransformation:
    warmup = min(settings.warmup_steps, max(settings.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.learning_rate, warmup, max(settings.steps, warmup + 1),
                                                  settings.learning_rate * 0.1)
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip_norm),
                       optax.adamw(schedule, weight_decay=settings.weight_decay))


def _schedule_only(settings: WarmStartSettings) -> WarmStartSettings:
    """`settings` with the fields the compiled step does not depend on set to their defaults."""
    keep = ("steps", "learning_rate", "warmup_steps", "weight_decay", "grad_clip_norm")
    return WarmStartSettings(**{f: getattr(settings, f) for f in keep})


@functools.lru_cache(maxsize=8)
def make_sft_step(config: Qwen2_5_VLConfig, settings: WarmStartSettings, grid: tuple) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, jitted (params, opt_state, batch) -> (params, opt_state, loss)); `grid`, the
    batch's image_grid_thw as a tuple of rows, is static. Cached: equal shapes compile once."""
    optimizer = make_optimizer(settings)
    grid = np.asarray(grid, np.int32)

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(lambda p: sft_loss(config, grid, p, batch))(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


def _epoch_batches(rng: np.random.Generator, n: int, batch_size: int):
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield order[start:start + batch_size]


def _targets(rng: np.random.Generator, examples: PolicyExamples, idx: np.ndarray, mix: TargetMix, size: int) -> list[str]:
    out = []
    for i in idx:
        bbox, points = warm_start_target(rng, examples.bbox[i], examples.points[i], examples.candidates[i], mix, size)
        out.append(format_answer(examples.reasoning[i], bbox, points))
    return out


def _image_size(examples: PolicyExamples, config: Qwen2_5_VLConfig) -> int:
    _, h, w = (int(v) for v in examples.image_grid_thw[0])
    return max(h, w) * config.vision.patch_size


def warm_start_policy(train: PolicyExamples, val: Optional[PolicyExamples] = None, out_dir: Optional[str] = None,
                      settings: WarmStartSettings = WarmStartSettings(), tokenizer=None,
                      log: Optional[Callable[[str], Any]] = None) -> dict:
    """Trains the policy stand-in; returns metrics (losses, timings, `evaluate_policy` on `val`),
    and writes the model directory `out_dir` (when given). Deterministic for a seed."""
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    tokenizer = QwenTokenizer.default() if tokenizer is None else tokenizer
    log = log or (lambda _: None)
    if len(train) < settings.batch_size:
        raise ValueError(f"warm start: {len(train)} training prompts, fewer than batch_size={settings.batch_size}")
    start = time.perf_counter()
    config = policy_config(settings)
    params = nn.unbox(qwen2_5_vl.init_params(config, jax.random.key(settings.seed)))
    input_ids, attention_mask = trim_prompts(train)
    patches = np.asarray(train.pixel_values, np.float32)
    grid = np.tile(np.asarray(train.image_grid_thw[:1], np.int32), (settings.batch_size, 1))
    optimizer, step = make_sft_step(config, _schedule_only(settings), tuple(map(tuple, grid.tolist())))
    opt_state = optimizer.init(params)
    size = _image_size(train, config)
    rng = np.random.default_rng(settings.seed)
    batches = _epoch_batches(rng, len(train), settings.batch_size)
    losses = []
    for i in range(settings.steps):
        idx = next(batches)
        target_ids, target_mask = encode_targets(tokenizer, _targets(rng, train, idx, settings.mix, size),
                                                 settings.response_tokens)
        batch = {"input_ids": input_ids[idx], "attention_mask": attention_mask[idx],
                 "pixel_values": patches[idx].reshape(-1, patches.shape[-1]),
                 "target_ids": target_ids, "target_mask": target_mask}
        params, opt_state, loss = step(params, opt_state, batch)
        losses.append(float(loss))
        if i % 25 == 0 or i == settings.steps - 1:
            log(f"warm start: step {i} loss {losses[-1]:.4f} ({time.perf_counter() - start:.1f} s)")
    metrics: dict[str, Any] = {"steps": settings.steps, "loss_first": losses[0], "loss_last": losses[-1],
                               "losses": losses, "train_seconds": time.perf_counter() - start}
    if val is not None:
        t = time.perf_counter()
        metrics["validation"] = evaluate_policy(config, params, val, tokenizer, settings)
        metrics["eval_seconds"] = time.perf_counter() - t
        log(f"warm start: validation {_summary(metrics['validation'])}")
    if out_dir is not None:
        checkpoint.save_model(out_dir, checkpoint.POLICY_KIND, config, params)
    metrics["seconds"] = time.perf_counter() - start
    return metrics


def _summary(m: dict) -> str:
    return (f"full format {m['format_rate']:.2f}, accuracy {m['accuracy_mean']:.3f} "
            f"(iou {m['bbox_iou']:.2f}, l1 {m['bbox_l1']:.2f}, points {m['points_l1']:.2f}), "
            f"{m['response_tokens_mean']:.1f} tokens")


def evaluate_policy(config: Qwen2_5_VLConfig, params, examples: PolicyExamples, tokenizer,
                    settings: WarmStartSettings = WarmStartSettings()) -> dict:
    """Greedy answers to `examples` scored with `settings.reward` (host reference):
    format_rate (thinking_format and segmentation_format both 1), the mean of each accuracy
    component and of their sum (accuracy_mean), stop_rate (ended with a stop token), mean
    response tokens, and the first few responses."""
    input_ids, attention_mask = trim_prompts(examples)
    patches = np.asarray(examples.pixel_values, np.float32)
    n, b = len(examples), min(settings.eval_batch_size, len(examples))
    grid = np.tile(np.asarray(examples.image_grid_thw[:1], np.int32), (b, 1))
    texts, lengths, stopped = [], [], []
    for s in range(0, n, b):
        idx = np.arange(s, s + b) % n            # the last batch wraps around: one compiled shape
        tokens, length = greedy_decode(config, params, input_ids[idx], attention_mask[idx],
                                       patches[idx].reshape(-1, patches.shape[-1]), grid,
                                       settings.eval_max_new_tokens, tokenizer.eos_ids, tokenizer.pad_id)
        tokens, length = np.asarray(tokens), np.asarray(length)
        for row, k in zip(tokens, length):
            body = [int(t) for t in row[:k]]
            stop = bool(body) and body[-1] in tokenizer.eos_ids
            texts.append(tokenizer.decode(body[:-1] if stop else body, skip_special_tokens=True))
            lengths.append(int(k))
            stopped.append(stop)
    texts, lengths, stopped = texts[:n], lengths[:n], stopped[:n]
    scores = [reward_host.host_reward(text, (examples.bbox[i].tolist(), examples.points[i].tolist()),
                                      settings.reward) for i, text in enumerate(texts)]
    mean = lambda key: float(np.mean([s[key] for s in scores]))
    out = {c: mean(c) for c in reward_host.COMPONENTS}
    out["format_rate"] = float(np.mean([s["thinking_format"] == 1 and s["segmentation_format"] == 1 for s in scores]))
    out["accuracy_mean"] = out["bbox_iou"] + out["bbox_l1"] + out["points_l1"]
    out["stop_rate"] = float(np.mean(stopped))
    out["response_tokens_mean"] = float(np.mean(lengths))
    out["response_tokens_max"] = int(np.max(lengths))
    out["num_samples"] = n
    out["examples"] = texts[:4]
    return out
