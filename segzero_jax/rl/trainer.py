"""The GRPO train step: rollout -> device rewards -> advantages -> clipped policy update.

    tx = make_optimizer(learning_rate=1e-6, weight_decay=1e-2, grad_clip_norm=1.0)
    state = init_train_state(params, tx, jax.random.key(0), settings)
    step_fn = make_train_step(model_config, settings, tx, byte_table, vision_layouts)
    state, metrics = step_fn(state, ref_params, batch)     # one jitted program, state donated

One step, all on device (Seg-Zero's verl `ray_trainer.fit` iteration):
  1. sample `group_size` responses per prompt (`sampler.sample`, temperature T);
  2. Seg-Zero's rewards from the response token ids (`reward_device.device_rewards`), plus
     DAPO's soft overlong penalty when `overlong_buffer` > 0:
         r_len = clip(((M - buffer) - L) / buffer, -1, 0) * overlong_penalty;
  3. advantages by the named estimator (`grpo.ADVANTAGE_ESTIMATORS`) over each group; with
     `skip_equal_reward_groups` a group whose rewards are all equal gets zero weight (its rows
     leave the loss: DAPO's dynamic sampling at a fixed shape);
  4. log-probs of the frozen reference policy (when kl_coef > 0) and of the behaviour policy
     (only when they differ from the current ones: several PPO epochs or several updates per
     step; otherwise the ratio is exactly 1 and they are the update's own stop_gradient);
  5. B / update_batch_size optimizer updates, each over its prompts' n responses in
     micro-batches of `micro_batch_size` rows with gradient accumulation, repeated
     `ppo_epochs` times; loss = agg(pg) - entropy_coef agg(entropy) + kl_coef agg(kl)
     (`grpo`), each term aggregated exactly over the update's rows (`microbatch_aggregate`);
     AdamW after global-norm clipping. A non-finite loss or gradient skips the update
     (params and optimizer state unchanged) and is counted.

The vision tower runs once per prompt, not per response: its features are computed per update
for that update's prompts, every row of a group reads its prompt's features, and the vision
gradient is one backward pass (`jax.vjp`) fed the features' gradient accumulated over the
micro-batches; with `freeze_vision` the features are computed once per step and the tower is
not trained. Row layouts: rows are prompt-major (row b*n + j = sample j of prompt b); update u
holds prompts u, u + U, u + 2U, ...; micro-batch k of an update holds its rows k, k + K, ...
(strided, so each micro-batch stays spread over the data-parallel devices).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig
from segzero_jax.rl import grpo
from segzero_jax.rl.byte_table import ByteTable
from segzero_jax.rl.reward_device import device_rewards
from segzero_jax.rl.reward_host import COMPONENTS, HOST_REWARDS
from segzero_jax.rl.sampler import END_OF_TEXT, IM_END, SamplingConfig, sample


@dataclasses.dataclass(frozen=True)
class GRPOSettings:
    """The step's static settings (config section `rl`, see experiments/configs/common.py)."""

    group_size: int = 8
    max_new_tokens: int = 1300
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    reward: str = "seg_strict"
    reward_max_bytes: int = 0        # the device reward's byte budget per response (0: 8 per token)
    image_size: int = 840
    advantage_estimator: str = "grpo"
    policy_loss: str = "ppo"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    kl_coef: float = 5e-3
    kl_kind: str = "low_var_kl"
    entropy_coef: float = 1e-3
    loss_aggregation: str = "seq-mean-token-mean"
    update_batch_size: int = 16
    micro_batch_size: int = 8
    ppo_epochs: int = 1
    skip_equal_reward_groups: bool = False
    overlong_buffer: int = 0
    overlong_penalty: float = 1.0
    freeze_vision: bool = False
    chunk_size: int = 256
    decode_layout: str = "unscanned"
    stop_token_ids: tuple[int, ...] = (IM_END, END_OF_TEXT)
    pad_id: int = END_OF_TEXT

    def __post_init__(self):
        checks = [("reward", self.reward in HOST_REWARDS, sorted(HOST_REWARDS)),
                  ("advantage_estimator", self.advantage_estimator in grpo.ADVANTAGE_ESTIMATORS,
                   sorted(grpo.ADVANTAGE_ESTIMATORS)),
                  ("policy_loss", self.policy_loss in grpo.POLICY_LOSSES, sorted(grpo.POLICY_LOSSES)),
                  ("kl_kind", self.kl_kind in grpo.KL_PENALTIES, sorted(grpo.KL_PENALTIES)),
                  ("loss_aggregation", self.loss_aggregation in grpo.AGGREGATIONS, sorted(grpo.AGGREGATIONS))]
        for name, ok, known in checks:
            if not ok:
                raise ValueError(f"GRPOSettings.{name}: {getattr(self, name)!r} is not one of {known}")
        for name in ("group_size", "max_new_tokens", "update_batch_size", "micro_batch_size", "ppo_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"GRPOSettings.{name} must be positive, got {getattr(self, name)!r}")
        if self.max_new_tokens < 2:
            raise ValueError("GRPOSettings.max_new_tokens must be at least 2")
        if not 0 <= self.overlong_buffer < self.max_new_tokens:
            raise ValueError(f"GRPOSettings.overlong_buffer must be in [0, max_new_tokens), got {self.overlong_buffer}")

    @property
    def uses_reference(self) -> bool:
        return self.kl_coef > 0

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(group_size=self.group_size, max_new_tokens=self.max_new_tokens,
                              temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                              stop_token_ids=self.stop_token_ids, pad_id=self.pad_id,
                              decode_layout=self.decode_layout)

    def num_updates(self, batch_size: int) -> int:
        """Optimizer updates per step of `batch_size` prompts (Seg-Zero's global_batch_size)."""
        if batch_size % self.update_batch_size:
            raise ValueError(f"rl.update_batch_size={self.update_batch_size} does not divide the "
                             f"{batch_size} prompts of a step")
        rows = self.update_batch_size * self.group_size
        if rows % self.micro_batch_size:
            raise ValueError(f"rl.micro_batch_size={self.micro_batch_size} does not divide the {rows} "
                             "responses of an update (update_batch_size x group_size)")
        return batch_size // self.update_batch_size

    def needs_behaviour_pass(self, batch_size: int) -> bool:
        """True when responses meet params other than the ones that drew them."""
        return self.ppo_epochs > 1 or self.num_updates(batch_size) > 1


@flax.struct.dataclass
class TrainState:
    """step int32[], params, opt_state, rng, and the non-finite update counters."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    skipped_updates: jax.Array       # total updates skipped for a non-finite loss or gradient
    nonfinite_streak: jax.Array      # consecutive steps with a skipped update


def trainable_mask(params: Any, freeze_vision: bool) -> Any:
    """True for the leaves the optimizer updates (everything but `visual` when frozen)."""
    return {k: jax.tree.map(lambda _: not (freeze_vision and k == "visual"), v) for k, v in params.items()}


def make_optimizer(learning_rate: float | optax.Schedule = 1e-6, weight_decay: float = 1e-2,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, grad_clip_norm: float = 1.0,
                   warmup_steps: int = 0, mask: Any = None) -> optax.GradientTransformation:
    """Global-norm clipping then AdamW (verl's FSDP actor); linear warm-up when asked.
    `mask` (a tree of bools or a function of the params): leaves outside it are left unchanged."""
    lr = learning_rate if callable(learning_rate) else learning_rate_schedule(learning_rate, warmup_steps)
    chain = optax.chain(optax.clip_by_global_norm(grad_clip_norm) if grad_clip_norm > 0 else optax.identity(),
                        optax.adamw(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mu_dtype=jnp.float32))
    return chain if mask is None else freeze_outside(chain, mask)


def learning_rate_schedule(learning_rate: float, warmup_steps: int = 0) -> optax.Schedule:
    """Constant, after a linear warm-up from 0 over `warmup_steps` updates when given."""
    if warmup_steps:
        return optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.constant_schedule(learning_rate)


def freeze_outside(inner: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
    """`inner` on the leaves where `mask` is True; zero updates (no weight decay) elsewhere."""
    return optax.chain(optax.masked(inner, mask), optax.masked(optax.set_to_zero(), _negate(mask)))


def _negate(mask):
    if callable(mask):
        return lambda p: jax.tree.map(lambda m: not m, mask(p))
    return jax.tree.map(lambda m: not m, mask)


def init_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    zero = lambda: jnp.zeros((), jnp.int32)  # noqa: E731  (distinct buffers: the state is donated)
    return TrainState(step=zero(), params=params, opt_state=tx.init(params), rng=rng,
                      skipped_updates=zero(), nonfinite_streak=zero())


def _dict_path(path) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def train_state_shardings(params: Any, param_shardings: Any, tx: optax.GradientTransformation,
                          mesh: jax.sharding.Mesh) -> TrainState:
    """Shardings of the TrainState of `params` (arrays or ShapeDtypeStructs): params as given,
    each optimizer moment as the param it belongs to (the param whose dict path ends the
    moment's path, same shape), counters and the RNG replicated."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    by_path = {_dict_path(p): (tuple(a.shape), sh) for (p, a), sh in
               zip(jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(param_shardings))}

    def moment(path, leaf):
        keys = _dict_path(path)
        for start in range(len(keys)):
            hit = by_path.get(keys[start:])
            if hit is not None and hit[0] == tuple(leaf.shape):
                return hit[1]
        return rep

    opt = jax.tree_util.tree_map_with_path(moment, jax.eval_shape(tx.init, params))
    return TrainState(step=rep, params=param_shardings, opt_state=opt, rng=rep, skipped_updates=rep,
                      nonfinite_streak=rep)


def overlong_penalty(lengths: jax.Array, max_len: int, buffer: int, factor: float) -> jax.Array:
    """DAPO's soft overlong punishment, float32[R]: 0 up to max_len - buffer, then falling
    linearly to -factor at max_len."""
    if buffer <= 0:
        return jnp.zeros(lengths.shape, jnp.float32)
    over = (lengths.astype(jnp.float32) - (max_len - buffer)) / buffer
    return -factor * jnp.clip(over, 0.0, 1.0)


def split_updates(x: jax.Array, num_updates: int, group_size: int) -> jax.Array:
    """Rows [B*n, ...] -> [U, B/U*n, ...]: update u holds prompts u, u + U, ... (whole groups)."""
    b = x.shape[0] // group_size
    y = x.reshape((b // num_updates, num_updates, group_size) + x.shape[1:])
    return jnp.swapaxes(y, 0, 1).reshape((num_updates, -1) + x.shape[1:])


def split_prompts(x: jax.Array, num_updates: int) -> jax.Array:
    """Per-prompt values [B, ...] -> [U, B/U, ...], in the prompt order of `split_updates`."""
    return jnp.swapaxes(x.reshape((x.shape[0] // num_updates, num_updates) + x.shape[1:]), 0, 1)


def split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    """Rows [N, ...] -> [K, N/K, ...]: micro-batch k holds rows k, k + K, k + 2K, ..."""
    y = x.reshape((x.shape[0] // num_micro, num_micro) + x.shape[1:])
    return jnp.swapaxes(y, 0, 1)


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


class _Policy:
    """The policy's two passes the update needs, on params trees."""

    def __init__(self, config: Qwen2_5_VLConfig, settings: GRPOSettings, num_targets: int):
        self.config, self.settings, self.num_targets = config, settings, num_targets
        self.model = Qwen2_5_VL(config)

    def image_features(self, visual_params, pixels, layout):
        """float32[I * L, 1176] patches of I equal-grid images -> features `[I, L/4, D]`."""
        feats = self.model.apply({"params": {"visual": visual_params}}, pixels, vision_layout=layout,
                                 method=Qwen2_5_VL.encode_images)
        return feats.reshape(layout["image_slots"].shape[0], -1, feats.shape[-1])

    def log_probs(self, params, rows, feats_rows):
        """(log-probs, entropies) float32[R, M] of the responses in `rows`."""
        feats = None if feats_rows is None else feats_rows.reshape(-1, feats_rows.shape[-1])
        return self.model.apply({"params": params}, rows["ids"], None, rows.get("grid"), rows["mask"],
                                num_targets=self.num_targets, temperature=self.settings.temperature,
                                chunk_size=self.settings.chunk_size, image_features=feats,
                                method=Qwen2_5_VL.response_log_probs)


def _row_features(feats: Optional[jax.Array], prompt_of_row: jax.Array) -> Optional[jax.Array]:
    return None if feats is None else feats[prompt_of_row]


def _forward_all(policy: _Policy, params, rows, feats, num_micro: int):
    """Log-probs of all rows of `rows` (float32[N, M]), a micro-batch at a time, no gradient."""
    micro = jax.tree.map(lambda a: split_micro(a, num_micro), rows)

    def one(mb):
        lp, _ = policy.log_probs(params, mb, _row_features(feats, mb["prompt"]))
        return jax.lax.stop_gradient(lp)

    lp = jax.lax.map(one, micro)                              # [K, N/K, M]
    return jnp.swapaxes(lp, 0, 1).reshape(-1, lp.shape[-1])   # back to row order


def _micro_loss(policy: _Policy, settings: GRPOSettings, params, feats_rows, mb, denom):
    """One micro-batch's share of the update's loss, and its metric shares."""
    logp, entropy = policy.log_probs(params, mb, feats_rows)
    old = jax.lax.stop_gradient(logp) if mb.get("old_logp") is None else mb["old_logp"]
    m = mb["loss_mask"]
    agg = lambda x: grpo.microbatch_aggregate(x, m, settings.loss_aggregation, denom)  # noqa: E731
    pg, clipped, neg_ratio = grpo.POLICY_LOSSES[settings.policy_loss](
        logp, old, mb["advantages"], settings.clip_ratio_low, settings.clip_ratio_high, m)
    metrics = {"pg_loss": agg(pg), "pg_clipfrac": agg(clipped), "ppo_kl": agg(neg_ratio),
               "entropy": agg(entropy)}
    loss = metrics["pg_loss"] - settings.entropy_coef * metrics["entropy"]
    if settings.uses_reference:
        metrics["kl_loss"] = agg(grpo.kl_penalty(logp, mb["ref_logp"], settings.kl_kind))
        loss = loss + settings.kl_coef * metrics["kl_loss"]
    metrics["loss"] = loss
    return loss, metrics


def grpo_update(policy: _Policy, settings: GRPOSettings, tx: optax.GradientTransformation, params,
                opt_state, rows, pixels, layout):
    """One optimizer update over `rows` (one update's responses, dict of [N, ...] arrays).

    Returns (params, opt_state, metrics, finite). `pixels` are the patches of the update's
    prompts (None: the features are in rows["features"], frozen, or there are no images).
    """
    n_rows = rows["ids"].shape[0]
    num_micro = n_rows // settings.micro_batch_size
    denom = grpo.aggregation_denominator(rows["loss_mask"], settings.loss_aggregation, num_micro)
    train_vision = pixels is not None
    if train_vision:
        feats, vision_vjp = jax.vjp(lambda vp: policy.image_features(vp, pixels, layout), params["visual"])
    else:
        feats, vision_vjp = rows.get("features"), None
    micro = jax.tree.map(lambda a: split_micro(a, num_micro), {k: v for k, v in rows.items() if k != "features"})

    def body(carry, mb):
        grads, g_feats, metrics = carry

        def loss_fn(p, f):
            return _micro_loss(policy, settings, p, _row_features(f, mb["prompt"]), mb, denom)

        if train_vision:
            (_, m), (g, gf) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(params, feats)
            g_feats = g_feats + gf
        else:
            (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params, feats)
        return (_tree_add(grads, g), g_feats, _tree_add(metrics, m)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    metric_zeros = {k: jnp.zeros((), jnp.float32) for k in ("pg_loss", "pg_clipfrac", "ppo_kl", "entropy", "loss")}
    if settings.uses_reference:
        metric_zeros["kl_loss"] = jnp.zeros((), jnp.float32)
    g_feats0 = jnp.zeros_like(feats) if train_vision else jnp.zeros(())
    (grads, g_feats, metrics), _ = jax.lax.scan(body, (zeros, g_feats0, metric_zeros), micro)
    if train_vision:
        (g_visual,) = vision_vjp(g_feats)
        grads = dict(grads, visual=_tree_add(grads["visual"], g_visual))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
    updates, new_opt = tx.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
    metrics["grad_norm"] = grad_norm
    return keep(new_params, params), keep(new_opt, opt_state), metrics, finite


def _response_rows(batch, rollout, n: int):
    """Prompt + response sequences int32[R, T + M] and their masks."""
    ids = jnp.repeat(jnp.asarray(batch["input_ids"], jnp.int32), n, axis=0)
    mask = jnp.repeat(jnp.asarray(batch["attention_mask"], jnp.int32), n, axis=0)
    m = rollout.tokens.shape[1]
    resp_mask = (jnp.arange(m)[None, :] < rollout.lengths[:, None]).astype(jnp.int32)
    return jnp.concatenate([ids, rollout.tokens], axis=1), jnp.concatenate([mask, resp_mask], axis=1), resp_mask


def train_step(state: TrainState, ref_params: Any, batch: dict[str, Any], *, config: Qwen2_5_VLConfig,
               settings: GRPOSettings, tx: optax.GradientTransformation, byte_table: ByteTable,
               layouts: Optional[dict] = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One GRPO step (see the module docstring). Pure; jit it with `make_train_step`.

    batch: input_ids / attention_mask int32[B, T], pixel_values float32[B*P, 1176] (equal
    grids), image_grid_thw int32[B, 3], bbox float32[B, 4], points float32[B, 2, 2].
    layouts: host vision layouts {"rollout": of the B images, "update": of one update's images}.
    """
    s = settings
    n = s.group_size
    b = batch["input_ids"].shape[0]
    num_updates = s.num_updates(b)
    rng, rollout_key = jax.random.split(state.rng)
    has_images = batch.get("pixel_values") is not None
    rollout = sample(config, state.params, batch, rollout_key, s.sampling(),
                     layout=None if layouts is None else layouts.get("rollout"))

    rewards = device_rewards(rollout.tokens, rollout.lengths, jnp.repeat(batch["bbox"], n, axis=0),
                             jnp.repeat(batch["points"], n, axis=0), byte_table, s.reward,
                             max_bytes=s.reward_max_bytes or None, image_size=float(s.image_size))
    total = rewards["total"] + overlong_penalty(rollout.lengths, s.max_new_tokens, s.overlong_buffer,
                                                s.overlong_penalty)
    grouped = total.reshape(b, n)
    advantages = grpo.compute_advantages(grouped, s.advantage_estimator).reshape(-1)
    equal = jnp.all(grouped == grouped[:, :1], axis=1)
    row_weight = jnp.where(jnp.repeat(equal, n), 0.0, 1.0) if s.skip_equal_reward_groups else jnp.ones_like(total)

    seq_ids, seq_mask, resp_mask = _response_rows(batch, rollout, n)
    rows = {"ids": seq_ids, "mask": seq_mask, "loss_mask": resp_mask.astype(jnp.float32) * row_weight[:, None],
            "advantages": advantages, "prompt": jnp.arange(b * n, dtype=jnp.int32) // n}
    policy = _Policy(config, s, rollout.tokens.shape[1])
    num_micro_all = (b * n) // s.micro_batch_size
    pixels_per_prompt = None
    if has_images:
        rows["grid"] = jnp.repeat(jnp.asarray(batch["image_grid_thw"], jnp.int32), n, axis=0)
        pixels_per_prompt = jnp.asarray(batch["pixel_values"]).reshape(b, -1, batch["pixel_values"].shape[-1])

    def all_features(params):
        if not has_images:
            return None
        return jax.lax.stop_gradient(policy.image_features(params["visual"], batch["pixel_values"],
                                                           layouts["rollout"]))

    if s.uses_reference:
        rows["ref_logp"] = _forward_all(policy, ref_params, rows, all_features(ref_params), num_micro_all)
    frozen_feats = all_features(state.params) if (has_images and s.freeze_vision) else None
    if s.needs_behaviour_pass(b):
        feats = frozen_feats if frozen_feats is not None else all_features(state.params)
        rows["old_logp"] = _forward_all(policy, state.params, rows, feats, num_micro_all)

    # Per update: its prompts' rows, with prompt indices local to the update.
    per_update = jax.tree.map(lambda a: split_updates(a, num_updates, n), rows)
    per_update["prompt"] = jnp.broadcast_to(jnp.arange(per_update["prompt"].shape[1], dtype=jnp.int32) // n,
                                            per_update["prompt"].shape)
    if frozen_feats is not None:
        per_update["features"] = split_prompts(frozen_feats, num_updates)
    upd_pixels = None
    if has_images and not s.freeze_vision:
        upd_pixels = split_prompts(pixels_per_prompt, num_updates).reshape(num_updates, -1, pixels_per_prompt.shape[-1])

    def one_update(carry, xs):
        params, opt_state, skipped = carry
        rows_u, pixels_u = xs
        params, opt_state, metrics, finite = grpo_update(policy, s, tx, params, opt_state, rows_u, pixels_u,
                                                         None if layouts is None else layouts.get("update"))
        return (params, opt_state, skipped + (~finite).astype(jnp.int32)), metrics

    carry = (state.params, state.opt_state, jnp.zeros((), jnp.int32))
    all_metrics = []
    for _ in range(s.ppo_epochs):
        carry, m = jax.lax.scan(one_update, carry, (per_update, upd_pixels))
        all_metrics.append(m)
    params, opt_state, skipped = carry
    update_metrics = jax.tree.map(lambda *a: jnp.mean(jnp.stack(a)), *all_metrics)

    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng,
                              skipped_updates=state.skipped_updates + skipped,
                              nonfinite_streak=jnp.where(skipped > 0, state.nonfinite_streak + 1, 0))
    lengths = rollout.lengths.astype(jnp.float32)
    metrics = {f"reward/{k}": jnp.mean(rewards[k]) for k in COMPONENTS}
    metrics.update({
        "reward/total": jnp.mean(total), "reward/total_std": jnp.std(total),
        "reward/overlong_penalty": jnp.mean(total - rewards["total"]),
        "response_length/mean": jnp.mean(lengths), "response_length/max": jnp.max(lengths),
        "response_length/truncated": 1.0 - jnp.mean(rollout.stopped.astype(jnp.float32)),
        "zero_weight_group_share": jnp.mean(equal.astype(jnp.float32)) if s.skip_equal_reward_groups else 0.0,
        "equal_reward_group_share": jnp.mean(equal.astype(jnp.float32)),
        "generated_tokens": jnp.sum(rollout.lengths), "trained_tokens": jnp.sum(rows["loss_mask"]),
        "decode_steps": rollout.num_steps, "skipped_updates": skipped,
        "nonfinite_streak": new_state.nonfinite_streak,
    })
    metrics.update({f"actor/{k}": v for k, v in update_metrics.items()})
    return new_state, {"metrics": metrics, "tokens": rollout.tokens, "lengths": rollout.lengths,
                       "rewards": total}


def host_layouts(config: Qwen2_5_VLConfig, settings: GRPOSettings, grid: Any) -> Optional[dict]:
    """Vision layouts of a step's images and of one update's images, from the host grid int[B, 3]
    (all rows one grid, Seg-Zero's fixed frame)."""
    from segzero_jax.models.qwen2_5_vl.vision_layout import vision_layout
    if grid is None:
        return None
    g = np.asarray(grid)
    if len(np.unique(g, axis=0)) != 1:
        raise ValueError(f"the GRPO step needs one image grid for every prompt (a fixed frame), got {np.unique(g, axis=0).tolist()}")
    per_update = settings.update_batch_size
    return {"rollout": vision_layout(g, config.vision), "update": vision_layout(g[:per_update], config.vision)}


def make_train_step(config: Qwen2_5_VLConfig, settings: GRPOSettings, tx: optax.GradientTransformation,
                    byte_table: ByteTable, layouts: Optional[dict], *, state_shardings: Any = None,
                    ref_shardings: Any = None, batch_shardings: Any = None, mesh=None, rules=None):
    """The jitted step `(state, ref_params, batch) -> (state, outputs)`, state donated.

    With a mesh: traced under it and the logical-axis `rules`, with the given shardings.
    """
    fn = functools.partial(train_step, config=config, settings=settings, tx=tx, byte_table=byte_table,
                           layouts=layouts)
    kw = {}
    if state_shardings is not None:
        kw = dict(in_shardings=(state_shardings, ref_shardings, batch_shardings),
                  out_shardings=(state_shardings, None))
    jitted = jax.jit(fn, donate_argnums=(0,), **kw)
    if mesh is None:
        return jitted

    def run(state, ref_params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
            return jitted(state, ref_params, batch)

    run.lower = lambda *a: _lower(jitted, mesh, rules, *a)
    return run


def _lower(jitted, mesh, rules, *args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        return jitted.lower(*args)
