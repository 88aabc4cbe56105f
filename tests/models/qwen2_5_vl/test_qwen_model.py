"""Model API: logical axes, static-shape vision layouts under jit, mask forms, remat, dtypes, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segzero_jax.models.qwen2_5_vl import (Qwen2_5_VL, cache_logical_axes, get_rope_index, init_cache,
                                          vision_layout)
from segzero_jax.models.qwen2_5_vl.model import init_params
from tests.models.qwen2_5_vl.hf_reference import IMG, image_row, left_pad


@pytest.fixture(scope="module")
def batch():
    rs = np.random.RandomState(31)
    grid = np.array([[1, 6, 8], [1, 4, 6]])
    ids, mask = left_pad([image_row(rs, 12, 2, 3), image_row(rs, 6, 4, 5)])
    return ids.astype(np.int32), mask.astype(np.int32), rs.randn(72, 1176).astype(np.float32), grid


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


def test_right_padded_lengths_form_equals_dense_mask(ours_tied):
    cfg, params = ours_tied
    rs = np.random.RandomState(32)
    ids = rs.randint(0, 150000, (2, 10)).astype(np.int32)
    mask = np.ones((2, 10), np.int32)
    mask[1, 6:] = 0
    model = Qwen2_5_VL(cfg)
    dense = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))(params)
    lengths = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask, right_padded=True))(params)
    valid = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(lengths)[valid], np.asarray(dense)[valid], atol=1e-5, rtol=0)


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
    np.testing.assert_array_equal(np.asarray(cache["position"]), mask.sum(1) + np.asarray(deltas)[:, 0])
    np.testing.assert_array_equal(np.asarray(cache["valid"])[:, :ids.shape[1]], mask)
    assert int(cache["index"]) == ids.shape[1]
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
