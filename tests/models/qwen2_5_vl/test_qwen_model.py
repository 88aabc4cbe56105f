"""Model API: logical axes, static-shape vision layouts under jit, mask forms, remat, dtypes, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segzero_jax.models.qwen2_5_vl import (Qwen2_5_VL, cache_logical_axes, get_rope_index, init_cache,
                                          vision_layout)
from segzero_jax.models.qwen2_5_vl.model import init_params, inverse_permutation, packing_destinations
from tests.models.qwen2_5_vl.hf_reference import IMG, image_batch, left_pad


@pytest.fixture(scope="module")
def batch():
    ids, mask, pixels, grid = image_batch(np.random.RandomState(31), [[1, 6, 8], [1, 4, 6]], [(2, 3), (4, 5)])
    return ids.astype(np.int32), mask.astype(np.int32), pixels, grid


def _jit_forward(cfg, grid, **kw):
    return jax.jit(lambda p, i, pv, m: Qwen2_5_VL(cfg).apply({"params": p}, i, pv, grid, m, **kw))


@pytest.fixture(scope="module")
def ref_logits(ours_tied, batch):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    return np.asarray(_jit_forward(cfg, grid)(params, ids, pixels, mask))


def test_every_param_has_logical_axes(ours_tied):
    cfg, _ = ours_tied
    boxed = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
    for leaf in leaves:
        assert len(leaf.names) == leaf.value.ndim
    q = boxed["language_model"]["decoder"]["layers"]["layer"]["q"]["kernel"]
    assert q.names == ("layers", "embed", "heads", "head_dim")
    blocks = boxed["visual"]["blocks"]["block"]["qkv"]["kernel"]
    assert blocks.names[0] == "layers" and blocks.value.shape[0] == cfg.vision.depth
    cache = init_cache(cfg, 2, 8)
    axes = cache_logical_axes(cfg)
    assert jax.tree_util.tree_structure(cache) == jax.tree_util.tree_structure(
        axes, is_leaf=lambda x: isinstance(x, tuple))
    for k in cache:
        assert len(axes[k]) == cache[k].ndim


@pytest.mark.slow
def test_traced_vision_layout_equals_host_grid(ours_tied, batch, ref_logits):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    model = Qwen2_5_VL(cfg)
    host = ref_logits
    calls = []

    @jax.jit
    def fwd(p, ids, pixels, grid, mask, layout):
        calls.append(1)
        return model.apply({"params": p}, ids, pixels, grid, mask, vision_layout=layout)

    layout = vision_layout(grid, cfg.vision)
    out = fwd(params, ids, pixels, jnp.asarray(grid), mask, layout)
    np.testing.assert_allclose(np.asarray(out), np.asarray(host), atol=1e-5, rtol=0)
    fwd(params, ids, pixels[::-1].copy(), jnp.asarray(grid), mask, layout)   # same shapes: no retrace
    assert len(calls) == 1


def test_right_padded_declaration_skips_packing_with_same_logits(ours_tied):
    cfg, params = ours_tied
    rs = np.random.RandomState(32)
    ids = rs.randint(0, 150000, (2, 10)).astype(np.int32)
    mask = np.ones((2, 10), np.int32)
    mask[1, 6:] = 0
    model = Qwen2_5_VL(cfg)
    packed = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))(params)
    declared = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask, right_padded=True))(params)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(declared)[valid], np.asarray(packed)[valid], atol=1e-5, rtol=0)


def test_packing_permutations():
    valid = jnp.asarray([[0, 0, 1, 1, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], bool)
    dest = np.asarray(packing_destinations(valid))
    np.testing.assert_array_equal(dest[0], [3, 4, 0, 1, 5, 2])
    np.testing.assert_array_equal(dest[1], np.arange(6))
    np.testing.assert_array_equal(dest[2], np.arange(6))
    order = np.asarray(inverse_permutation(jnp.asarray(dest)))
    np.testing.assert_array_equal(np.take_along_axis(dest, order, 1), np.tile(np.arange(6), (3, 1)))


@pytest.mark.slow
def test_attention_never_gets_a_dense_mask(ours_tied, batch, monkeypatch):
    """Prompt pass, prefill and decode all use the causal/lengths forms the cuDNN kernel takes."""
    from segzero_jax.models.qwen2_5_vl import language
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    calls = []
    real = language.dot_product_attention

    def spy(q, k, v, **kw):
        calls.append(kw)
        return real(q, k, v, **kw)

    monkeypatch.setattr(language, "dot_product_attention", spy)
    model = Qwen2_5_VL(cfg)
    cache = init_cache(cfg, 2, ids.shape[1] + 2)
    phases = {
        "forward": lambda: model.apply({"params": params}, ids, pixels, grid, mask),
        "prefill": lambda: model.apply({"params": params}, ids, cache, pixels, grid, mask,
                                       method=Qwen2_5_VL.prefill),
        "decode": lambda: model.apply({"params": params}, jnp.asarray([1, 2]), cache,
                                      method=Qwen2_5_VL.decode)}
    for name, run in phases.items():
        calls.clear()
        run()
        assert calls, name
        for c in calls:
            assert c.get("mask") is None and c["kv_lengths"] is not None, name
            assert c["is_causal"] == (name != "decode"), name


@pytest.mark.slow
def test_tpu_flash_backend_equals_xla(ours_tied, batch, ref_logits):
    """The whole policy (vision segments, packed prompt, decode) on the Pallas TPU kernel, interpreted."""
    from jax.experimental.pallas import tpu as pltpu
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    flash = Qwen2_5_VL(cfg.replace(attention_impl="tpu_flash"))
    xla = Qwen2_5_VL(cfg.replace(attention_impl="xla"))
    cache = init_cache(cfg, 2, ids.shape[1] + 1)
    with pltpu.force_tpu_interpret_mode():
        logits = flash.apply({"params": params}, ids, pixels, grid, mask)
        _, filled = flash.apply({"params": params}, ids, cache, pixels, grid, mask, method=Qwen2_5_VL.prefill)
        step, _ = flash.apply({"params": params}, jnp.asarray([3, 4]), filled, method=Qwen2_5_VL.decode)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref_logits[valid], atol=1e-4, rtol=0)
    _, ref_filled = xla.apply({"params": params}, ids, cache, pixels, grid, mask, method=Qwen2_5_VL.prefill)
    ref_step, _ = xla.apply({"params": params}, jnp.asarray([3, 4]), ref_filled, method=Qwen2_5_VL.decode)
    np.testing.assert_allclose(np.asarray(step), np.asarray(ref_step), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_rows_of_different_lengths_decode_independently(ours_tied):
    """Row b's next key goes to slot lengths[b]; each row's logits equal that row decoded alone."""
    cfg, params = ours_tied
    model = Qwen2_5_VL(cfg)
    rs = np.random.RandomState(33)
    rows = [list(rs.randint(0, 150000, 9)), list(rs.randint(0, 150000, 3))]
    ids, mask = left_pad(rows)
    step = jax.jit(lambda p, t, c: model.apply({"params": p}, t, c, method=Qwen2_5_VL.decode))
    prefill = jax.jit(lambda p, i, m, c: model.apply({"params": p}, i, c, attention_mask=m,
                                                     method=Qwen2_5_VL.prefill))
    logits, cache = prefill(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32),
                            init_cache(cfg, 2, 12))
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), [9, 3])
    new = jnp.asarray([5, 7], jnp.int32)
    logits, cache = step(params, new, cache)
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), [10, 4])
    for b, row in enumerate(rows):
        alone_ids = jnp.asarray([row + [int(new[b])]], jnp.int32)
        alone = model.apply({"params": params}, alone_ids)
        np.testing.assert_allclose(np.asarray(logits[b]), np.asarray(alone[0, -1]), atol=1e-4, rtol=0)
    # A full row keeps its keys: the step's key is dropped, the length stays at capacity.
    _, full = prefill(params, jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), init_cache(cfg, 2, 9))
    _, after = step(params, new, full)
    np.testing.assert_array_equal(np.asarray(after["lengths"]), [9, 4])
    np.testing.assert_array_equal(np.asarray(after["k"])[:, 0], np.asarray(full["k"])[:, 0])


@pytest.mark.slow
def test_remat_policies_same_values_and_grads(ours_tied, batch):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch

    def loss(p, c):
        return jnp.mean(Qwen2_5_VL(c).apply({"params": p}, ids, pixels, grid, mask)[..., :512] ** 2)

    ref_v, ref_g = jax.jit(jax.value_and_grad(functools.partial(loss, c=cfg)))(params)
    for policy in ("full",):
        v, g = jax.jit(jax.value_and_grad(functools.partial(loss, c=cfg.replace(remat_policy=policy))))(params)
        np.testing.assert_allclose(v, ref_v, rtol=1e-5)
        jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), g, ref_g)
    vis_grad = ref_g["visual"]["blocks"]["block"]["qkv"]["kernel"]
    assert float(jnp.abs(vis_grad).sum()) > 0


@pytest.mark.slow
def test_chunked_log_probs_gradients_equal_full_logits(ours_tied, batch):
    """Gradients through the chunked (rematerialised) log-probs equal those of full logits."""
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    r = 5
    weights = jnp.asarray(mask[:, -r:], jnp.float32) * jnp.arange(1.0, r + 1)

    def chunked(p):
        lp, ent = Qwen2_5_VL(cfg).apply({"params": p}, ids, pixels, grid, mask, num_targets=r, chunk_size=2,
                                        method=Qwen2_5_VL.response_log_probs)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * weights)

    def full(p):
        z = Qwen2_5_VL(cfg).apply({"params": p}, ids, pixels, grid, mask)[:, -r - 1:-1]
        lp = jnp.take_along_axis(jax.nn.log_softmax(z), jnp.asarray(ids[:, -r:])[..., None], -1)[..., 0]
        ent = -jnp.sum(jax.nn.softmax(z) * jax.nn.log_softmax(z), -1)
        return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * weights)

    v, g = jax.jit(jax.value_and_grad(chunked))(params)
    ref_v, ref_g = jax.jit(jax.value_and_grad(full))(params)
    np.testing.assert_allclose(v, ref_v, rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g, ref_g)
    with pytest.raises(ValueError, match="num_targets"):
        Qwen2_5_VL(cfg).apply({"params": params}, ids, num_targets=ids.shape[1],
                              method=Qwen2_5_VL.response_log_probs)


@pytest.mark.slow
def test_bfloat16_params_and_compute(ours_tied, batch, ref_logits):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    ref = ref_logits
    cfg16 = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    p16 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
    out = jax.jit(lambda p: Qwen2_5_VL(cfg16).apply({"params": p}, ids, pixels, grid, mask))(p16)
    assert out.dtype == jnp.float32
    valid = mask.astype(bool)
    err = np.abs(np.asarray(out)[valid] - np.asarray(ref)[valid]).max()
    assert err < 0.05 * np.abs(np.asarray(ref)[valid]).max()


def test_precomputed_positions(ours_tied, batch, ref_logits):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    model = Qwen2_5_VL(cfg)
    pos, deltas = get_rope_index(ids, mask, grid, image_token_id=IMG, spatial_merge_size=2)

    @jax.jit
    def prefill(p, pos, deltas):
        cache = init_cache(cfg, 2, ids.shape[1] + 1)
        return model.apply({"params": p}, ids, cache, pixels, grid, mask, position_ids=pos,
                           rope_deltas=deltas, all_logits=True, method=Qwen2_5_VL.prefill)

    logits, cache = prefill(params, pos, deltas)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], ref_logits[valid], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(np.asarray(cache["rope_deltas"]), np.asarray(deltas)[:, 0])
    np.testing.assert_array_equal(np.asarray(cache["lengths"]), mask.sum(1))
    flat = jnp.broadcast_to(pos[:1], pos.shape)       # positions really are taken from the input
    shifted, _ = prefill(params, flat, deltas)
    assert np.abs(np.asarray(shifted)[valid] - ref_logits[valid]).max() > 1e-3


def test_clear_errors(ours_tied, batch):
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    model = Qwen2_5_VL(cfg)
    with pytest.raises(ValueError, match="18 image tokens .* 12 features"):
        model.apply({"params": params}, ids, pixels[:48], grid[:1], mask)
    with pytest.raises(ValueError, match=r"pixel_values must be \[num_patches, 1176\]"):
        model.apply({"params": params}, ids, pixels[:, :100], grid, mask)
    with pytest.raises(ValueError, match="72 patches but image_grid_thw describes 48"):
        model.apply({"params": params}, ids, pixels, grid[:1], mask)
    with pytest.raises(ValueError, match="multiples of spatial_merge_size"):
        vision_layout([[1, 5, 8]], cfg.vision)
    with pytest.raises(ValueError, match="precomputed `vision_layout"):
        jax.jit(lambda g: model.apply({"params": params}, ids, pixels, g, mask))(jnp.asarray(grid))
    with pytest.raises(ValueError, match="exceeds the cache capacity"):
        model.apply({"params": params}, ids, init_cache(cfg, 2, 4), pixels, grid, mask,
                    method=Qwen2_5_VL.prefill)
