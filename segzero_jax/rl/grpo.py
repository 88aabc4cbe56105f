"""GRPO math as pure functions over masked arrays (Seg-Zero's verl `core_algos`).

Shapes: N responses (= prompts x group size), T response tokens, V vocabulary;
`mask` float32/bool[N, T] marks valid response tokens.

  advantage_i = (r_i - mean_g) / (std_g + eps),  std with Bessel's correction, eps = 1e-6;
                a group of one response gets mean 0, std 1 (`compute_grpo_outcome_advantage`);
                other estimators by name in `ADVANTAGE_ESTIMATORS` ("grpo_no_std": r_i - mean_g,
                "rloo": r_i - mean of the group's other rewards)
  policy loss = max(-A * ratio, -A * clip(ratio, 1 - c_low, 1 + c_high)),  ratio = exp(logp - old_logp)
                (`compute_policy_loss`; c_high > c_low is DAPO's clip-higher); "gspo" (Zheng et
                al. 2025) uses one ratio per sequence, s_i = exp(mean_t (logp - old_logp)),
                carried by each token as sg(s_i) * exp(logp_t - sg(logp_t)) (`POLICY_LOSSES`)
  low_var_kl  = clip(exp(ref - logp) - (ref - logp) - 1, -10, 10)  (`kl_penalty`)
  entropy     = logsumexp(z) - sum(softmax(z) * z)  (`entropy_from_logits`)
  loss        = agg(pg) - entropy_coef * agg(entropy) + kl_coef * agg(kl)  (`dp_actor.update_policy`)

Aggregations (`AGGREGATIONS`, chosen by name):
  "seq-mean-token-mean"        mean over sequences of each sequence's token-mean: Seg-Zero's
                               objective (below); rows without valid tokens (batch padding)
                               are left out
  "token-mean-per-microbatch"  token-mean within each of M micro-batches (rows split in
                               order), averaged over the micro-batches
  "token-mean"                 sum over all valid tokens / their count
  "seq-mean-token-sum"         mean over sequences of each sequence's token-sum
  "seq-mean-token-sum-norm"    sum over all valid tokens / (N * T)   (Dr. GRPO)

Seg-Zero's `dp_actor.update_policy` token-means each loss term over one micro-batch of
`micro_batch_size_per_device_for_update` rows on one GPU, divides by the number of
micro-batches and sums (gradient accumulation); FSDP then averages the gradients over the GPUs.
Its released scripts use one row per micro-batch, so the step's objective is the mean over all
responses of each response's token-mean: "seq-mean-token-mean", whatever micro-batching an
SPMD step uses. "token-mean-per-microbatch" with M micro-batches is that loop with N / M rows
per micro-batch on a single device.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, group_ids: jax.Array, num_groups: int,
                     eps: float = 1e-6) -> jax.Array:
    """float32[N] advantages from float32[N] rewards and int32[N] group ids in [0, num_groups)."""
    r = rewards.astype(jnp.float32)
    count = jax.ops.segment_sum(jnp.ones_like(r), group_ids, num_groups)
    mean = jax.ops.segment_sum(r, group_ids, num_groups) / jnp.maximum(count, 1)
    sq = jax.ops.segment_sum((r - mean[group_ids]) ** 2, group_ids, num_groups)
    std = jnp.sqrt(sq / jnp.maximum(count - 1, 1))
    single = count[group_ids] <= 1
    mean_i = jnp.where(single, 0.0, mean[group_ids])
    std_i = jnp.where(single, 1.0, std[group_ids])
    return (r - mean_i) / (std_i + eps)


def group_advantages_2d(rewards: jax.Array, eps: float = 1e-6) -> jax.Array:
    """float32[B, G] advantages for a [prompts, group] layout of rewards."""
    r = rewards.astype(jnp.float32)
    g = r.shape[-1]
    if g == 1:
        return r / (1.0 + eps)
    mean = r.mean(-1, keepdims=True)
    std = jnp.sqrt(((r - mean) ** 2).sum(-1, keepdims=True) / (g - 1))
    return (r - mean) / (std + eps)


def group_mean_advantages(rewards: jax.Array) -> jax.Array:
    """float32[B, G] rewards minus their group mean, without the std division (Dr. GRPO, Liu et
    al. 2025; verl's `norm_adv_by_std_in_grpo=False`); a group of one keeps its reward."""
    r = rewards.astype(jnp.float32)
    if r.shape[-1] == 1:
        return r
    return r - r.mean(-1, keepdims=True)


def leave_one_out_advantages(rewards: jax.Array) -> jax.Array:
    """float32[B, G]: r_i minus the mean of the other G - 1 rewards of its group (RLOO, Ahmadian
    et al. 2024; verl's `compute_rloo_outcome_advantage`); a group of one keeps its reward."""
    r = rewards.astype(jnp.float32)
    g = r.shape[-1]
    if g == 1:
        return r
    return r - (r.sum(-1, keepdims=True) - r) / (g - 1)


# Advantage estimators on the [prompts, group] layout of a step's rewards, chosen by name
# (config `rl.advantage_estimator`).
ADVANTAGE_ESTIMATORS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "grpo": group_advantages_2d,
    "grpo_no_std": group_mean_advantages,
    "rloo": leave_one_out_advantages,
}


def compute_advantages(rewards: jax.Array, estimator: str = "grpo") -> jax.Array:
    """float32[B, G] advantages of float32[B, G] rewards with the named estimator."""
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise KeyError(f"unknown advantage estimator {estimator!r}; "
                       f"known: {sorted(ADVANTAGE_ESTIMATORS)}")
    return ADVANTAGE_ESTIMATORS[estimator](rewards)


def policy_loss_terms(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                      clip: float = 0.2, clip_high: Optional[float] = None,
                      mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token (PPO-clipped loss, clipped indicator, -log ratio): float32[N, T] each.

    `advantages` is float32[N] (broadcast over tokens) or float32[N, T]; the ratio is clipped
    to [1 - clip, 1 + clip_high] (clip_high defaults to clip). `mask` is not read (the
    token-level ratio needs none); it keeps the signature of `gspo_loss_terms`.
    """
    del mask
    clip_high = clip if clip_high is None else clip_high
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    neg_kl = logp.astype(jnp.float32) - old_logp.astype(jnp.float32)
    ratio = jnp.exp(neg_kl)
    loss1 = -adv * ratio
    loss2 = -adv * jnp.clip(ratio, 1.0 - clip, 1.0 + clip_high)
    return jnp.maximum(loss1, loss2), (loss2 > loss1).astype(jnp.float32), -neg_kl


def gspo_loss_terms(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
                    clip: float = 3e-4, clip_high: Optional[float] = None,
                    mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """GSPO's sequence-level clipped objective per token (float32[N, T] each, as above).

    s_i = exp(mean over row i's valid tokens of (logp - old_logp)); each token carries
    s_i,t = sg(s_i) * exp(logp_t - sg(logp_t)) (value s_i, gradient s_i * grad logp_t), and
    loss_t = max(-A_i s_i,t, -A_i clip(s_i,t, 1 - clip, 1 + clip_high)). Aggregated with
    "seq-mean-token-mean" this is the paper's J_GSPO (mean over sequences of
    min(s_i A_i, clip(s_i) A_i), with grad log s_i = mean_t grad logp_t).
    """
    clip_high = clip if clip_high is None else clip_high
    lp, old = logp.astype(jnp.float32), old_logp.astype(jnp.float32)
    m = jnp.ones_like(lp) if mask is None else mask.astype(jnp.float32)
    adv = advantages[:, None] if advantages.ndim == 1 else advantages
    log_seq_ratio = _masked_mean(lp - old, m, axis=-1)[:, None]
    token_ratio = jnp.exp(jax.lax.stop_gradient(log_seq_ratio) + lp - jax.lax.stop_gradient(lp))
    loss1 = -adv * token_ratio
    loss2 = -adv * jnp.clip(token_ratio, 1.0 - clip, 1.0 + clip_high)
    neg = jnp.broadcast_to(-log_seq_ratio, lp.shape)
    return jnp.maximum(loss1, loss2), (loss2 > loss1).astype(jnp.float32), neg


# Per-token policy losses by name (config `rl.policy_loss`): (logp, old_logp, advantages,
# clip, clip_high, mask) -> (loss, clipped indicator, -log ratio), float32[N, T] each.
POLICY_LOSSES: dict[str, Callable[..., tuple[jax.Array, jax.Array, jax.Array]]] = {
    "ppo": policy_loss_terms,
    "gspo": gspo_loss_terms,
}


KL_PENALTIES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "kl": lambda logp, ref: logp - ref,
    "abs": lambda logp, ref: jnp.abs(logp - ref),
    "mse": lambda logp, ref: 0.5 * (logp - ref) ** 2,
    "low_var_kl": lambda logp, ref: jnp.clip(jnp.exp(ref - logp) - (ref - logp) - 1, -10, 10),
}


def kl_penalty(logp: jax.Array, ref_logp: jax.Array, kind: str = "low_var_kl") -> jax.Array:
    """Per-token KL estimate float32[N, T] (`core_algos.kl_penalty`)."""
    if kind not in KL_PENALTIES:
        raise KeyError(f"unknown kl kind {kind!r}; known: {sorted(KL_PENALTIES)}")
    return KL_PENALTIES[kind](logp.astype(jnp.float32), ref_logp.astype(jnp.float32))


def entropy_from_logits(logits: jax.Array) -> jax.Array:
    """float32[..., V] logits -> float32[...] categorical entropy."""
    z = logits.astype(jnp.float32)
    return jax.nn.logsumexp(z, axis=-1) - jnp.sum(jax.nn.softmax(z, axis=-1) * z, axis=-1)


def _masked_mean(x, m, axis=None):
    """Mean of x over m's valid entries; 0 where there are none (never 0 / 0)."""
    return jnp.sum(x * m, axis=axis) / jnp.maximum(jnp.sum(m, axis=axis), 1.0)


def _seq_mean_token_mean(x, m):
    """Mean over the rows holding at least one valid token (padding rows count for nothing)."""
    has_tokens = (jnp.sum(m, axis=-1) > 0).astype(jnp.float32)
    return jnp.sum(_masked_mean(x, m, axis=-1)) / jnp.maximum(jnp.sum(has_tokens), 1.0)


def _token_mean_per_microbatch(x, m, num_micro_batches: int = 1):
    n = x.shape[0]
    if n % num_micro_batches:
        raise ValueError(f"{n} rows do not split into {num_micro_batches} micro-batches")
    xs = x.reshape(num_micro_batches, -1, *x.shape[1:])
    ms = m.reshape(num_micro_batches, -1, *m.shape[1:])
    return jnp.mean(jax.vmap(_masked_mean)(xs, ms))


AGGREGATIONS: dict[str, Callable[..., jax.Array]] = {
    "token-mean-per-microbatch": _token_mean_per_microbatch,
    "token-mean": lambda x, m, **_: _masked_mean(x, m),
    "seq-mean-token-mean": lambda x, m, **_: _seq_mean_token_mean(x, m),
    "seq-mean-token-sum": lambda x, m, **_: jnp.mean(jnp.sum(x * m, axis=-1)),
    "seq-mean-token-sum-norm": lambda x, m, **_: jnp.sum(x * m) / x.size,
}


def aggregate(values: jax.Array, mask: jax.Array, mode: str = "seq-mean-token-mean",
              num_micro_batches: int = 1) -> jax.Array:
    """Reduces float32[N, T] per-token values to a scalar with the named aggregation."""
    if mode not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {mode!r}; known: {sorted(AGGREGATIONS)}")
    m = mask.astype(jnp.float32)
    if mode == "token-mean-per-microbatch":
        return _token_mean_per_microbatch(values, m, num_micro_batches)
    return AGGREGATIONS[mode](values, m)


def aggregation_denominator(mask: jax.Array, mode: str, num_micro_batches: int = 1) -> jax.Array:
    """The normaliser that makes `microbatch_aggregate` over a partition of the rows of
    `mask` float32[N, T] sum to `aggregate` over all of them (gradient accumulation)."""
    if mode not in AGGREGATIONS:
        raise KeyError(f"unknown aggregation {mode!r}; known: {sorted(AGGREGATIONS)}")
    m = mask.astype(jnp.float32)
    if mode == "seq-mean-token-mean":
        return jnp.maximum(jnp.sum((jnp.sum(m, axis=-1) > 0).astype(jnp.float32)), 1.0)
    if mode == "token-mean":
        return jnp.maximum(jnp.sum(m), 1.0)
    if mode == "seq-mean-token-sum":
        return jnp.asarray(m.shape[0], jnp.float32)
    if mode == "seq-mean-token-sum-norm":
        return jnp.asarray(m.size, jnp.float32)
    return jnp.asarray(num_micro_batches, jnp.float32)


def microbatch_aggregate(values: jax.Array, mask: jax.Array, mode: str, denominator: jax.Array) -> jax.Array:
    """One micro-batch's share of `aggregate(all rows)`: summed over the micro-batches of a
    partition, with `denominator = aggregation_denominator(all rows' mask, mode, M)`, it equals
    the full aggregate (for "token-mean-per-microbatch": with the micro-batches as the M parts)."""
    m = mask.astype(jnp.float32)
    if mode == "seq-mean-token-mean":
        return jnp.sum(_masked_mean(values, m, axis=-1)) / denominator
    if mode == "token-mean-per-microbatch":
        return _masked_mean(values, m) / denominator
    return jnp.sum(values * m) / denominator


def grpo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              ref_logp: Optional[jax.Array] = None, entropy: Optional[jax.Array] = None,
              clip: float = 0.2, kl_coef: float = 5e-3, kl_kind: str = "low_var_kl",
              entropy_coef: float = 1e-3, aggregation: str = "seq-mean-token-mean",
              num_micro_batches: int = 1) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar loss and metrics (pg_loss, pg_clipfrac, ppo_kl, entropy, kl_loss)."""
    agg = lambda x: aggregate(x, mask, aggregation, num_micro_batches)  # noqa: E731
    pg, clipped, neg_ratio = policy_loss_terms(logp, old_logp, advantages, clip)
    metrics = {"pg_loss": agg(pg), "pg_clipfrac": agg(clipped), "ppo_kl": agg(neg_ratio)}
    loss = metrics["pg_loss"]
    if entropy is not None:
        metrics["entropy"] = agg(entropy.astype(jnp.float32))
        loss = loss - entropy_coef * metrics["entropy"]
    if ref_logp is not None:
        metrics["kl_loss"] = agg(kl_penalty(logp, ref_logp, kl_kind))
        loss = loss + kl_coef * metrics["kl_loss"]
    return loss, metrics
