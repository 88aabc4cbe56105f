"""Sharded init on an 8-device (data 2, fsdp 2, tensor 2) mesh; the sharded forward equals the unsharded one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, dummy_inputs, preset, vision_layout
from segzero_jax.parallel import DEFAULT_RULES, make_mesh, sharded_init
from tests.models.qwen2_5_vl.hf_reference import image_row, left_pad


@pytest.mark.slow
def test_sharded_forward_matches_unsharded():
    cfg = preset("tiny")
    mesh = make_mesh((2, 2, 2))
    init = lambda rng: Qwen2_5_VL(cfg).init(rng, **dummy_inputs(cfg))["params"]
    boxed, shardings = sharded_init(init, mesh, DEFAULT_RULES, jax.random.key(0))
    params = nn.unbox(boxed)
    q = params["language_model"]["decoder"]["layers"]["layer"]["q"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (2, 32, 2, 16)
    emb = params["language_model"]["embedding"]
    assert emb.addressable_shards[0].data.shape == (151936 // 2, 32)

    rs = np.random.RandomState(41)
    grid = np.array([[1, 6, 8], [1, 4, 6], [1, 4, 4], [1, 6, 6]])
    ids, mask = left_pad([image_row(rs, 12, 2, 3), image_row(rs, 6, 4, 5), image_row(rs, 4, 1, 1),
                          image_row(rs, 9, 3, 0)])
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    pixels = jnp.asarray(rs.randn(48 + 24 + 16 + 36, 1176).astype(np.float32))
    layout = vision_layout(grid, cfg.vision)
    fwd = lambda p, i, pv, m, lay: Qwen2_5_VL(cfg).apply({"params": p}, i, pv, jnp.asarray(grid), m,
                                                         vision_layout=lay)
    host_params = jax.device_get(params)
    ref = jax.jit(fwd)(host_params, ids, pixels, mask, layout)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(fwd)(params, ids, pixels, mask, layout)
    assert len(out.sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_equal_grids_run_as_an_image_batch_sharded_over_data_axes():
    """Equal grids give a one-image layout with I slots; sharded over (data, fsdp) it equals unsharded."""
    cfg = preset("tiny")
    grid = np.array([[1, 6, 8]] * 4)
    layout = vision_layout(grid, cfg.vision)
    assert layout["image_slots"].shape == (4,) and layout["patch_perm"].shape == (48,)
    assert vision_layout(np.array([[1, 6, 8], [1, 4, 6]]), cfg.vision)["image_slots"].shape == (1,)
    mesh = make_mesh((2, 2, 2))
    init = lambda rng: Qwen2_5_VL(cfg).init(rng, **dummy_inputs(cfg))["params"]
    boxed, _ = sharded_init(init, mesh, DEFAULT_RULES, jax.random.key(1))
    params = nn.unbox(boxed)
    pixels = jnp.asarray(np.random.RandomState(42).randn(4 * 48, 1176).astype(np.float32))
    enc = lambda p, pv, lay: Qwen2_5_VL(cfg).apply({"params": p}, pv, vision_layout=lay,
                                                   method=Qwen2_5_VL.encode_images)
    ref = jax.jit(enc)(jax.device_get(params), pixels, layout)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(enc)(params, pixels, layout)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
