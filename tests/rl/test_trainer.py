"""The GRPO step: micro-batched updates equal the full-batch loss, the options' formulas, the
non-finite guard, sharding, and a toy task on which the step learns."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, dummy_inputs, preset
from segzero_jax.parallel import DEFAULT_RULES, logical_shardings, make_mesh
from segzero_jax.rl import grpo
from segzero_jax.rl import trainer as T
from segzero_jax.rl.byte_table import byte_table_from_token_bytes

VOCAB, IMG, VS, VE, STOP, PAD, GOOD, BAD = 32, 10, 11, 12, 1, 0, 5, 6
GOOD_TEXT = b'<think>it is there</think><answer>{"bbox": [10, 10, 50, 60], "points_1": [20, 20], "points_2": [30, 40]}</answer>'
BAD_TEXT = b'<think>it is there</think><answer>{"bbox": [70, 70, 100, 100], "points_1": [80, 80], "points_2": [90, 90]}</answer>'


def small_config(**kw):
    base = preset("tiny")
    return base.replace(text=dataclasses.replace(base.text, vocab_size=VOCAB), image_token_id=IMG,
                        vision_start_token_id=VS, vision_end_token_id=VE, **kw)


def toy_table():
    """Token GOOD decodes to a right answer, BAD to a wrong one, every other token to nothing."""
    pieces = [b""] * VOCAB
    pieces[GOOD], pieces[BAD] = GOOD_TEXT, BAD_TEXT
    return byte_table_from_token_bytes(pieces)


def init(cfg, seed=0):
    ids = np.array([[VS, IMG, VE, 13]], np.int32)
    inputs = dict(dummy_inputs(cfg), input_ids=jnp.asarray(ids))
    return nn.unbox(Qwen2_5_VL(cfg).init(jax.random.key(seed), **inputs)["params"])


def toy_batch(b=4, seed=0, grid=(1, 4, 4)):
    rs = np.random.RandomState(seed)
    n_img = int(np.prod(grid)) // 4
    rows = [[int(t) for t in rs.randint(13, VOCAB, 2)] + [VS] + [IMG] * n_img + [VE]
            + [int(t) for t in rs.randint(13, VOCAB, 1 + i % 3)] for i in range(b)]
    t = max(map(len, rows))
    ids = np.zeros((b, t), np.int32)
    mask = np.zeros((b, t), np.int32)
    for i, r in enumerate(rows):
        ids[i, t - len(r):], mask[i, t - len(r):] = r, 1
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": rs.randn(b * int(np.prod(grid)), 1176).astype(np.float32),
            "image_grid_thw": np.array([grid] * b, np.int32),
            "bbox": np.array([[10, 10, 50, 60]] * b, np.float32),
            "points": np.array([[[20, 20], [30, 40]]] * b, np.float32)}


def settings(**kw):
    base = dict(group_size=4, max_new_tokens=6, update_batch_size=4, micro_batch_size=4, image_size=112,
                stop_token_ids=(STOP,), pad_id=PAD, kl_coef=5e-3, entropy_coef=1e-3, reward_max_bytes=512)
    base.update(kw)
    return T.GRPOSettings(**base)


# -- the update against the full-batch loss -------------------------------------------------

def _update_rows(cfg, b, n, m, seed=1):
    """A fixed update's rows: prompt + random response tokens, lengths, advantages, log-probs."""
    rs = np.random.RandomState(seed)
    batch = toy_batch(b, seed)
    tokens = rs.randint(13, VOCAB, (b * n, m)).astype(np.int32)
    lengths = rs.randint(1, m + 1, b * n)
    resp_mask = (np.arange(m)[None] < lengths[:, None]).astype(np.int32)
    ids = np.concatenate([np.repeat(batch["input_ids"], n, 0), tokens], 1)
    mask = np.concatenate([np.repeat(batch["attention_mask"], n, 0), resp_mask], 1)
    rows = {"ids": jnp.asarray(ids), "mask": jnp.asarray(mask),
            "loss_mask": jnp.asarray(resp_mask, jnp.float32),
            "advantages": jnp.asarray(rs.randn(b * n).astype(np.float32)),
            "prompt": jnp.arange(b * n, dtype=jnp.int32) // n,
            "grid": jnp.asarray(np.repeat(batch["image_grid_thw"], n, 0))}
    return batch, rows


@pytest.mark.slow
@pytest.mark.parametrize("aggregation,policy_loss,freeze", [
    ("seq-mean-token-mean", "ppo", False),
    ("token-mean", "gspo", False),
    ("token-mean-per-microbatch", "ppo", True),
])
def test_microbatched_update_equals_full_batch_loss(aggregation, policy_loss, freeze):
    """Gradient accumulation over strided micro-batches, the shared vision forward and its vjp give
    the gradient of `grpo.grpo_loss` over all rows, each row running its own vision forward."""
    from segzero_jax.models.qwen2_5_vl import vision_layout
    cfg = small_config()
    params = init(cfg)
    b, n, m = 2, 4, 5
    batch, rows = _update_rows(cfg, b, n, m)
    model = Qwen2_5_VL(cfg)
    row_pixels = np.repeat(batch["pixel_values"].reshape(b, -1, 1176), n, 0).reshape(-1, 1176)
    row_grid = np.repeat(batch["image_grid_thw"], n, 0)

    def full_logp(p):
        return model.apply({"params": p}, rows["ids"], jnp.asarray(row_pixels), row_grid, rows["mask"],
                           num_targets=m, method=Qwen2_5_VL.response_log_probs)

    lp0, _ = jax.jit(full_logp)(params)
    rs = np.random.RandomState(2)
    old = lp0 + jnp.asarray(rs.randn(*lp0.shape).astype(np.float32) * 0.3)   # ratios away from 1
    ref = lp0 + jnp.asarray(rs.randn(*lp0.shape).astype(np.float32) * 0.3)
    s = settings(group_size=n, max_new_tokens=m, update_batch_size=b, micro_batch_size=2,
                 loss_aggregation=aggregation, policy_loss=policy_loss, clip_ratio_low=0.2,
                 clip_ratio_high=0.28, kl_coef=0.1, entropy_coef=0.01, freeze_vision=freeze)
    num_micro = (b * n) // s.micro_batch_size
    # micro-batch k holds rows k, k + K, ...: the reference aggregates in that order
    order = np.asarray(T.split_micro(jnp.arange(b * n), num_micro)).reshape(-1)

    def loss(p):
        lp, ent = full_logp(p)
        pg_fn = grpo.POLICY_LOSSES[policy_loss]
        pieces = [x[order] for x in (lp, old, rows["advantages"], rows["loss_mask"], ref, ent)]
        lp_, old_, adv_, mask_, ref_, ent_ = pieces
        agg = lambda x: grpo.aggregate(x, mask_, aggregation, num_micro)  # noqa: E731
        pg, _, _ = pg_fn(lp_, old_, adv_, 0.2, 0.28, mask_)
        return agg(pg) - 0.01 * agg(ent_) + 0.1 * agg(grpo.kl_penalty(lp_, ref_, "low_var_kl"))

    want_loss, want = jax.jit(jax.value_and_grad(loss))(params)
    policy = T._Policy(cfg, s, m)
    tx = optax.sgd(1.0)
    if freeze:
        tx = T.freeze_outside(optax.sgd(1.0), T.trainable_mask(params, True))
    layout = vision_layout(batch["image_grid_thw"], cfg.vision)
    update_rows = dict(rows, ref_logp=ref, old_logp=old)
    pixels = jnp.asarray(batch["pixel_values"])
    if freeze:
        update_rows["features"] = policy.image_features(params["visual"], pixels, layout)
        pixels = None

    @jax.jit
    def run(p, state):
        return T.grpo_update(policy, s, tx, p, state, update_rows, pixels, layout)

    new, _, metrics, finite = run(params, tx.init(params))
    assert bool(finite)
    np.testing.assert_allclose(float(metrics["loss"]), float(want_loss), rtol=1e-5, atol=1e-7)
    got = jax.tree.map(lambda a, b: a - b, params, new)
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        w = _at(want, path)
        if freeze and path[0].key == "visual":
            np.testing.assert_array_equal(np.asarray(g), 0)
            continue
        scale = float(np.abs(np.asarray(w)).max()) or 1.0
        # the update is read off as params - new params: float32 rounding of the params themselves
        rounding = 4 * float(np.spacing(np.abs(np.asarray(_at(params, path))).max().astype(np.float32)))
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5 * scale + rounding, rtol=0,
                                   err_msg=jax.tree_util.keystr(path))
    assert float(np.abs(np.asarray(want["visual"]["patch_embed"]["kernel"])).max()) > 0


def _at(tree, path):
    for k in path:
        tree = tree[k.key]
    return tree


# -- the options' formulas --------------------------------------------------------------------

def test_asymmetric_clip_follows_dapo_clip_higher():
    logp = jnp.log(jnp.asarray([[1.25, 1.25, 0.7, 0.7]]))
    old = jnp.zeros((1, 4))
    adv = jnp.asarray([[1.0, -1.0, 1.0, -1.0]])
    loss, clipped, _ = grpo.policy_loss_terms(logp, old, adv, clip=0.2, clip_high=0.28)
    # ratio 1.25 < 1 + 0.28: not clipped for A > 0; ratio 0.7 < 1 - 0.2: clipped for A < 0
    np.testing.assert_allclose(np.asarray(loss), [[-1.25, 1.25, -0.7, 0.8]], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(clipped), [[0, 0, 0, 1]])
    sym, _, _ = grpo.policy_loss_terms(logp, old, adv, clip=0.2)
    np.testing.assert_allclose(np.asarray(sym), [[-1.2, 1.25, -0.7, 0.8]], rtol=1e-6)


def test_gspo_equals_the_sequence_level_objective():
    """seq-mean-token-mean of the GSPO token loss = -mean_i min(s_i A_i, clip(s_i) A_i), in value
    and in gradient with respect to the log-probs."""
    rs = np.random.RandomState(0)
    logp = jnp.asarray(rs.randn(6, 5).astype(np.float32) * 0.01 - 1)
    old = logp + jnp.asarray(rs.randn(6, 5).astype(np.float32) * 0.01)
    adv = jnp.asarray(rs.randn(6).astype(np.float32))
    mask = jnp.asarray((np.arange(5)[None] < rs.randint(1, 6, 6)[:, None]).astype(np.float32))
    lo, hi = 3e-3, 4e-3

    def ours(lp):
        loss, _, _ = grpo.gspo_loss_terms(lp, old, adv, lo, hi, mask)
        return grpo.aggregate(loss, mask, "seq-mean-token-mean")

    def paper(lp):
        s = jnp.exp(jnp.sum((lp - old) * mask, -1) / jnp.sum(mask, -1))
        return -jnp.mean(jnp.minimum(s * adv, jnp.clip(s, 1 - lo, 1 + hi) * adv))

    np.testing.assert_allclose(float(ours(logp)), float(paper(logp)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.grad(ours)(logp)), np.asarray(jax.grad(paper)(logp)),
                               rtol=1e-5, atol=1e-8)
    # some sequences are clipped in this draw, some not
    s = np.exp(np.asarray(jnp.sum((logp - old) * mask, -1) / jnp.sum(mask, -1)))
    assert ((s < 1 - lo) | (s > 1 + hi)).any() and ((s > 1 - lo) & (s < 1 + hi)).any()


def test_overlong_penalty_is_dapos_soft_punishment():
    pen = T.overlong_penalty(jnp.asarray([10, 12, 14, 16]), 16, 4, 2.0)
    np.testing.assert_allclose(np.asarray(pen), [0.0, 0.0, -1.0, -2.0])
    assert not np.asarray(T.overlong_penalty(jnp.asarray([16]), 16, 0, 1.0)).any()


def test_microbatch_aggregates_sum_to_the_full_aggregate():
    rs = np.random.RandomState(3)
    x = jnp.asarray(rs.randn(12, 7).astype(np.float32))
    mask = jnp.asarray((rs.rand(12, 7) > 0.4).astype(np.float32)).at[3].set(0.0)
    for mode in grpo.AGGREGATIONS:
        denom = grpo.aggregation_denominator(mask, mode, 4)
        parts = sum(grpo.microbatch_aggregate(x[k::4], mask[k::4], mode, denom) for k in range(4))
        order = np.concatenate([np.arange(k, 12, 4) for k in range(4)])
        want = grpo.aggregate(x[order], mask[order], mode, 4)
        np.testing.assert_allclose(float(parts), float(want), rtol=1e-6, atol=1e-6, err_msg=mode)


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="policy_loss"):
        settings(policy_loss="ppo2")
    with pytest.raises(ValueError, match="update_batch_size"):
        settings(update_batch_size=3).num_updates(4)
    with pytest.raises(ValueError, match="micro_batch_size"):
        settings(micro_batch_size=3).num_updates(4)
    assert not settings().needs_behaviour_pass(4)
    assert settings(update_batch_size=2).needs_behaviour_pass(4)
    assert settings(ppo_epochs=2).needs_behaviour_pass(4)


# -- whole steps --------------------------------------------------------------------------------

def _step(cfg, s, lr=1e-2, params=None, batch=None, tx=None):
    params = init(cfg) if params is None else params
    tx = T.make_optimizer(lr, weight_decay=0.0) if tx is None else tx
    batch = toy_batch() if batch is None else batch
    layouts = T.host_layouts(cfg, s, batch["image_grid_thw"])
    ref = jax.tree.map(jnp.copy, params) if s.uses_reference else None
    return params, tx, ref, batch, T.make_train_step(cfg, s, tx, toy_table(), layouts)


@pytest.mark.slow
def test_steps_learn_the_toy_task_and_skip_non_finite_updates():
    """On a toy vocabulary where one token decodes to the right answer, GRPO raises the reward;
    two updates per step make the behaviour pass (ratios leave 1); a NaN param skips the update."""
    cfg = small_config()
    s = settings(update_batch_size=2, micro_batch_size=4, skip_equal_reward_groups=True)
    params, tx, ref, batch, step = _step(cfg, s, lr=3e-2)
    state = T.init_train_state(params, tx, jax.random.key(0))
    rewards = []
    for _ in range(12):
        state, out = step(state, ref, batch)
        rewards.append(float(out["metrics"]["reward/total"]))
        metrics = out["metrics"]
    assert np.mean(rewards[-3:]) > np.mean(rewards[:3]) + 0.5, rewards
    assert float(metrics["actor/ppo_kl"]) != 0.0
    assert int(state.step) == 12 and int(state.skipped_updates) == 0
    assert 0 <= float(metrics["zero_weight_group_share"]) <= 1
    assert "actor/kl_loss" in metrics
    tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
    for row, n in zip(tokens, lengths):
        assert (row[n:] == PAD).all() and (n == 6 or row[n - 1] == STOP)

    bad = jax.tree.map(jnp.copy, state.params)
    bad["language_model"]["norm"]["scale"] = bad["language_model"]["norm"]["scale"].at[0].set(jnp.nan)
    before = jax.tree.map(np.asarray, bad)
    nan_state = state.replace(params=bad)
    nan_state, out = step(nan_state, ref, batch)
    assert int(nan_state.skipped_updates) == 2 and int(nan_state.nonfinite_streak) == 1
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(nan_state.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    nan_state, _ = step(nan_state, ref, batch)
    assert int(nan_state.nonfinite_streak) == 2


@pytest.mark.slow
def test_sharded_step_equals_single_device_without_reference():
    """kl_coef = 0 keeps no reference params; on a (2, 2, 2) mesh the step equals one device's.
    (Plain SGD: Adam's first step divides gradients near 0 by their own size, so it turns float
    noise into O(lr) differences.)"""
    cfg = small_config()
    s = settings(kl_coef=0.0, group_size=2, micro_batch_size=4)
    batch = toy_batch(b=4)
    params, tx, ref, _, step = _step(cfg, s, batch=batch, tx=optax.sgd(1.0))
    assert ref is None
    state = T.init_train_state(params, tx, jax.random.key(4))
    want_state, want = step(jax.tree.map(jnp.copy, state), None, batch)
    assert "actor/kl_loss" not in want["metrics"]

    mesh = make_mesh((2, 2, 2))
    abstract = jax.eval_shape(lambda r: Qwen2_5_VL(cfg).init(r, **dict(
        dummy_inputs(cfg), input_ids=jnp.asarray([[VS, IMG, VE, 13]], jnp.int32)))["params"], jax.random.key(0))
    p_shard = logical_shardings(abstract, mesh, DEFAULT_RULES)
    sharded_params = jax.device_put(params, p_shard)
    state_sh = T.init_train_state(sharded_params, tx, jax.random.key(4))
    layouts = T.host_layouts(cfg, s, batch["image_grid_thw"])
    step_sh = T.make_train_step(cfg, s, tx, toy_table(), layouts, mesh=mesh, rules=DEFAULT_RULES)
    got_state, got = step_sh(state_sh, None, batch)
    emb = got_state.params["language_model"]["embedding"]
    assert len(emb.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(got["tokens"]), np.asarray(want["tokens"]))
    for a, b in zip(jax.tree.leaves(want_state.params), jax.tree.leaves(got_state.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5, rtol=0)


@pytest.mark.parametrize("freeze", [False, True])
def test_optimizer_moments_take_their_params_sharding(freeze):
    """AdamW's moments are sharded as their params (not replicated), frozen vision included."""
    cfg = small_config()
    mesh = make_mesh((1, 8, 1))
    abstract = jax.eval_shape(lambda r: Qwen2_5_VL(cfg).init(r, **dict(
        dummy_inputs(cfg), input_ids=jnp.asarray([[VS, IMG, VE, 13]], jnp.int32)))["params"], jax.random.key(0))
    p_shard = logical_shardings(abstract, mesh, DEFAULT_RULES)
    params = nn.unbox(abstract)
    tx = T.make_optimizer(1e-3, mask=T.trainable_mask(params, True) if freeze else None)
    shardings = T.train_state_shardings(params, p_shard, tx, mesh)
    by_param = {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_flatten_with_path(p_shard)[0]}
    moments = [(jax.tree_util.keystr(p), s) for p, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]
               if ".mu[" in jax.tree_util.keystr(p) or ".nu[" in jax.tree_util.keystr(p)]
    assert moments
    sharded = 0
    for path, s in moments:
        want = by_param[path[path.index("['"):]]
        assert s.spec == want.spec, path
        sharded += any(a is not None for a in want.spec)
    assert sharded > 0
    assert ("visual" in str([p for p, _ in moments])) == (not freeze)
