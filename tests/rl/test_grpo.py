"""GRPO math against NumPy/torch re-derivations of verl's core_algos and hand-computed cases."""

from collections import defaultdict

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from segzero_jax.rl import grpo

RNG = np.random.default_rng(0)


def _reference_advantages(scores, index, eps=1e-6):
    """verl `compute_grpo_outcome_advantage` with torch (Bessel std, size-1 groups: 0/1)."""
    import torch
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(float(s))
    out = []
    for s, i in zip(scores, index):
        g = groups[i]
        if len(g) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = torch.mean(torch.tensor(g)).item()
            std = torch.std(torch.tensor([g])).item()
        out.append((s - mean) / (std + eps))
    return np.array(out, np.float32)


def test_group_advantages_match_reference():
    scores = RNG.integers(0, 6, size=24).astype(np.float32)
    index = np.array([0] * 8 + [1] * 8 + [2] * 7 + [3])
    perm = RNG.permutation(24)
    got = grpo.group_advantages(jnp.asarray(scores[perm]), jnp.asarray(index[perm]), 4)
    np.testing.assert_allclose(got, _reference_advantages(scores[perm], index[perm]), rtol=1e-5,
                               atol=1e-5)
    two_d = grpo.group_advantages_2d(jnp.asarray(scores[:16].reshape(2, 8)))
    np.testing.assert_allclose(two_d.reshape(-1), _reference_advantages(scores[:16], index[:16]),
                               rtol=1e-5, atol=1e-5)


def test_advantages_hand_cases():
    np.testing.assert_array_equal(grpo.group_advantages_2d(jnp.full((2, 4), 3.0)), 0.0)
    # rewards (1, 3): mean 2, Bessel std sqrt(2)
    got = grpo.group_advantages_2d(jnp.asarray([[1.0, 3.0]]))
    np.testing.assert_allclose(got, [[-1 / (2**0.5 + 1e-6), 1 / (2**0.5 + 1e-6)]], rtol=1e-6)
    single = grpo.group_advantages(jnp.asarray([4.0]), jnp.asarray([0]), 1)
    np.testing.assert_allclose(single, [4.0 / (1 + 1e-6)])


def _np_terms(logp, old, adv, ref, ent, clip=0.2):
    ratio = np.exp(logp - old)
    pg = np.maximum(-adv[:, None] * ratio, -adv[:, None] * np.clip(ratio, 1 - clip, 1 + clip))
    kl = np.clip(np.exp(ref - logp) - (ref - logp) - 1, -10, 10)
    return pg, kl, ent


def _np_agg(x, m, mode, micro=1):
    if mode == "token-mean-per-microbatch":
        xs, ms = np.split(x, micro), np.split(m, micro)
        return np.mean([(a * b).sum() / b.sum() for a, b in zip(xs, ms)])
    if mode == "token-mean":
        return (x * m).sum() / m.sum()
    if mode == "seq-mean-token-mean":
        return np.mean((x * m).sum(-1) / m.sum(-1))
    if mode == "seq-mean-token-sum":
        return np.mean((x * m).sum(-1))
    return (x * m).sum() / x.size


@pytest.mark.parametrize("mode", sorted(grpo.AGGREGATIONS))
def test_loss_matches_numpy(mode):
    n, t = 8, 6
    logp = RNG.normal(-1.0, 0.3, (n, t)).astype(np.float32)
    old = logp + RNG.normal(0, 0.3, (n, t)).astype(np.float32)
    ref = logp + RNG.normal(0, 2.0, (n, t)).astype(np.float32)
    adv = RNG.normal(0, 1, n).astype(np.float32)
    ent = RNG.uniform(0, 3, (n, t)).astype(np.float32)
    mask = (np.arange(t)[None] < RNG.integers(1, t + 1, n)[:, None]).astype(np.float32)
    loss, metrics = grpo.grpo_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(adv),
                                   jnp.asarray(mask), ref_logp=jnp.asarray(ref),
                                   entropy=jnp.asarray(ent), aggregation=mode,
                                   num_micro_batches=4)
    pg, kl, e = _np_terms(logp, old, adv, ref, ent)
    agg = lambda x: _np_agg(x, mask, mode, 4)  # noqa: E731
    np.testing.assert_allclose(metrics["pg_loss"], agg(pg), rtol=1e-5)
    np.testing.assert_allclose(metrics["kl_loss"], agg(kl), rtol=1e-5)
    np.testing.assert_allclose(loss, agg(pg) - 1e-3 * agg(e) + 5e-3 * agg(kl), rtol=1e-5)


def test_hand_computed_clip_and_gradient():
    # One sequence, two tokens. Token 0: ratio e^0.5 > 1.2 with A = 1 -> clipped (no grad).
    # Token 1: ratio e^-0.1 inside the range -> loss -A * ratio, grad -A * ratio.
    logp = jnp.asarray([[0.0, -1.1]])
    old = jnp.asarray([[-0.5, -1.0]])
    ref = jnp.asarray([[0.0, -1.0]])
    adv = jnp.asarray([1.0])
    mask = jnp.ones((1, 2))

    def loss_fn(lp):
        return grpo.grpo_loss(lp, old, adv, mask, ref_logp=ref, aggregation="token-mean")[0]

    r1 = np.exp(-0.1)
    kl1 = np.exp(0.1) - 0.1 - 1
    expected = (-1.2 - r1) / 2 + 5e-3 * (0.0 + kl1) / 2
    np.testing.assert_allclose(loss_fn(logp), expected, rtol=1e-6)
    # d low_var_kl / d logp = 1 - exp(ref - logp)
    grad = jax.grad(loss_fn)(logp)
    np.testing.assert_allclose(grad, [[0.0 + 5e-3 * 0.0 / 2, (-r1 + 5e-3 * (1 - np.exp(0.1))) / 2]],
                               rtol=1e-5, atol=1e-7)
    _, m = grpo.grpo_loss(logp, old, adv, mask, aggregation="token-mean")
    np.testing.assert_allclose(m["pg_clipfrac"], 0.5)


def test_kl_clamp_entropy_and_errors():
    big = grpo.kl_penalty(jnp.asarray([0.0]), jnp.asarray([30.0]))
    np.testing.assert_allclose(big, [10.0])
    logits = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [100.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(grpo.entropy_from_logits(logits), [np.log(4), 0.0], atol=1e-5)
    with pytest.raises(KeyError, match="unknown aggregation"):
        grpo.aggregate(jnp.ones((2, 2)), jnp.ones((2, 2)), "bogus")
    with pytest.raises(ValueError, match="micro-batches"):
        grpo.aggregate(jnp.ones((3, 2)), jnp.ones((3, 2)), "token-mean-per-microbatch",
                       num_micro_batches=2)
    with pytest.raises(KeyError, match="unknown kl"):
        grpo.kl_penalty(jnp.ones(1), jnp.ones(1), "bogus")


def _reference_update_objective(logp, old, adv, ref, ent, mask, *, ranks, per_device, micro):
    """Seg-Zero's `dp_actor.update_policy` over `ranks` GPUs, as the objective it differentiates.

    Each GPU gets `per_device` consecutive rows and loops over micro-batches of `micro` rows:
    loss = (masked_mean(pg) - 1e-3 masked_mean(entropy) + 5e-3 masked_mean(low_var_kl))
    / gradient_accumulation, summed by backward(); FSDP averages the gradients over GPUs.
    """
    def masked_mean(x, m):
        return jnp.sum(x * m) / jnp.sum(m)

    accumulation = per_device // micro
    per_rank = []
    for r in range(ranks):
        total = 0.0
        for start in range(r * per_device, (r + 1) * per_device, micro):
            s = slice(start, start + micro)
            ratio = jnp.exp(logp[s] - old[s])
            a = adv[s][:, None]
            pg = jnp.maximum(-a * ratio, -a * jnp.clip(ratio, 0.8, 1.2))
            kl = jnp.clip(jnp.exp(ref[s] - logp[s]) - (ref[s] - logp[s]) - 1, -10, 10)
            loss = masked_mean(pg, mask[s]) - 1e-3 * masked_mean(ent[s], mask[s])
            loss = loss + 5e-3 * masked_mean(kl, mask[s])
            total = total + loss / accumulation
        per_rank.append(total)
    return sum(per_rank) / ranks


@pytest.mark.slow
@pytest.mark.parametrize("config_name", ["seg_zero_3b", "seg_zero_7b"])
def test_recipe_objective_equals_seg_zero_update_loop(config_name):
    """The recipe's aggregation reproduces Seg-Zero's released update (8 GPUs, 16 prompts x 8
    samples = 128 responses, 16 per GPU, micro-batches of one response), value and gradient."""
    import importlib
    config = importlib.import_module(f"experiments.configs.{config_name}").get_config()
    n = config.data.batch_size * config.rl.group_size
    assert n == 128
    t = 12
    logp = jnp.asarray(RNG.normal(-1.0, 0.3, (n, t)), jnp.float32)
    old = logp + jnp.asarray(RNG.normal(0, 0.3, (n, t)), jnp.float32)
    ref = logp + jnp.asarray(RNG.normal(0, 0.5, (n, t)), jnp.float32)
    adv = jnp.asarray(RNG.normal(0, 1, n), jnp.float32)
    ent = jnp.asarray(RNG.uniform(0, 3, (n, t)), jnp.float32)
    # response lengths from 1 to t: token-mean over several rows would weight them differently
    mask = jnp.asarray(np.arange(t)[None] < RNG.integers(1, t + 1, n)[:, None], jnp.float32)

    def ours(lp):
        return grpo.grpo_loss(lp, old, adv, mask, ref_logp=ref, entropy=ent,
                              clip=config.rl.clip_ratio_low, kl_coef=config.rl.kl_coef,
                              kl_kind=config.rl.kl_kind, entropy_coef=config.rl.entropy_coef,
                              aggregation=config.rl.loss_aggregation,
                              num_micro_batches=n // config.rl.micro_batch_size)[0]

    def reference(lp):
        return _reference_update_objective(lp, old, adv, ref, ent, mask, ranks=8,
                                           per_device=16, micro=1)

    np.testing.assert_allclose(ours(logp), reference(logp), rtol=1e-5)
    np.testing.assert_allclose(jax.grad(ours)(logp), jax.grad(reference)(logp), rtol=1e-4,
                               atol=1e-9)
    # the guard: token-mean over the recipe's 8-response micro-batches is a different objective
    chunked = grpo.grpo_loss(logp, old, adv, mask, ref_logp=ref, entropy=ent,
                             aggregation="token-mean-per-microbatch",
                             num_micro_batches=n // config.rl.micro_batch_size)[0]
    assert abs(float(chunked) - float(reference(logp))) > 1e-4


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean", "token-mean-per-microbatch"])
def test_padding_rows_change_nothing(mode):
    """Rows without valid tokens (a batch padded for the mesh) leave loss and gradient as they
    were, and never produce 0 / 0."""
    n, t = 6, 5
    logp = jnp.asarray(RNG.normal(-1.0, 0.3, (n, t)), jnp.float32)
    old = logp + jnp.asarray(RNG.normal(0, 0.3, (n, t)), jnp.float32)
    ref = logp + jnp.asarray(RNG.normal(0, 0.5, (n, t)), jnp.float32)
    adv = jnp.asarray(RNG.normal(0, 1, n), jnp.float32)
    mask = jnp.asarray(np.arange(t)[None] < RNG.integers(1, t + 1, n)[:, None], jnp.float32)
    pad = lambda x: jnp.concatenate([x, jnp.full((2,) + x.shape[1:], 0.5, x.dtype)])  # noqa: E731

    def loss(lp, o, a, r, m, micro):
        return grpo.grpo_loss(lp, o, a, m, ref_logp=r, aggregation=mode, num_micro_batches=micro)[0]

    base, g = jax.value_and_grad(loss)(logp, old, adv, ref, mask, 3 if mode.endswith("microbatch") else 1)
    mask_p = jnp.concatenate([mask, jnp.zeros((2, t))])
    if mode.endswith("microbatch"):
        # The padding forms a micro-batch of its own: it adds 0 (not 0 / 0) and, as gradient
        # accumulation divides by the number of micro-batches, counts as one of the 4.
        padded, gp = jax.value_and_grad(loss)(pad(logp), pad(old), pad(adv), pad(ref), mask_p, 4)
        np.testing.assert_allclose(padded, base * 3 / 4, rtol=1e-6)
    else:
        padded, gp = jax.value_and_grad(loss)(pad(logp), pad(old), pad(adv), pad(ref), mask_p, 1)
        np.testing.assert_allclose(padded, base, rtol=1e-6)
        np.testing.assert_allclose(gp[:n], g, rtol=1e-5, atol=1e-8)
    assert np.isfinite(padded) and np.isfinite(np.asarray(gp)).all() and not np.asarray(gp[n:]).any()


def _reference_rloo(scores, index):
    """verl `compute_rloo_outcome_advantage`: r * n / (n - 1) - mean * n / (n - 1) per group."""
    groups = defaultdict(list)
    for s, i in zip(scores, index):
        groups[i].append(float(s))
    out = []
    for s, i in zip(scores, index):
        n = len(groups[i])
        out.append(s if n == 1 else s * n / (n - 1) - np.mean(groups[i]) * n / (n - 1))
    return np.array(out, np.float32)


def test_advantage_estimators():
    rewards = RNG.integers(0, 6, size=(3, 8)).astype(np.float32)
    index = np.repeat(np.arange(3), 8)
    flat = rewards.reshape(-1)
    np.testing.assert_allclose(grpo.compute_advantages(jnp.asarray(rewards), "grpo").reshape(-1),
                               _reference_advantages(flat, index), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grpo.compute_advantages(jnp.asarray(rewards), "rloo").reshape(-1),
                               _reference_rloo(flat, index), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grpo.compute_advantages(jnp.asarray(rewards), "grpo_no_std"),
                               rewards - rewards.mean(-1, keepdims=True), rtol=1e-6, atol=1e-6)
    # rewards (1, 3, 5): leave-one-out baselines 4, 3, 2
    np.testing.assert_allclose(grpo.compute_advantages(jnp.asarray([[1.0, 3.0, 5.0]]), "rloo"), [[-3.0, 0.0, 3.0]])
    for name in grpo.ADVANTAGE_ESTIMATORS:   # a group of one response keeps its reward (up to eps)
        np.testing.assert_allclose(grpo.compute_advantages(jnp.asarray([[4.0]]), name), [[4.0]], rtol=1e-5)
        assert jax.jit(grpo.compute_advantages, static_argnums=1)(jnp.ones((2, 4)), name).shape == (2, 4)
    with pytest.raises(KeyError, match="unknown advantage estimator"):
        grpo.compute_advantages(jnp.ones((2, 2)), "ppo")
