"""With bfloat16 compute, the matmuls run on bfloat16 operands: a float32 tensor leaking into the
activation stream (a float32 constant added, a missed cast) would silently put them on float32
operands, half or less of an accelerator's bf16 speed, and no CPU timing would show it. Traced
only (nothing runs), through `segzero_jax.flops.flops_by_operand_dtypes`."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.flops import flops_by_operand_dtypes
from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, init_cache, preset, vision_layout
from segzero_jax.models.qwen2_5_vl.model import init_params

BF16 = ("bfloat16", "bfloat16")


def _bf16_share(by_dtype: dict) -> float:
    return by_dtype.get(BF16, 0) / sum(by_dtype.values())


def _policy():
    """The 3B shapes with two layers each side (tracing stays quick; every kind of block is there)."""
    cfg = preset("3b", dtype="bfloat16", param_dtype="float32")
    cfg = cfg.replace(text=dataclasses.replace(cfg.text, num_layers=2),
                      vision=dataclasses.replace(cfg.vision, depth=2, fullatt_block_indexes=(1,)))
    return cfg, nn.unbox(jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0)))


def test_policy_prefill_and_decode_matmuls_are_bf16():
    cfg, params = _policy()
    model = Qwen2_5_VL(cfg)
    side, b = 8, 2                                      # a 112 px image per row: 16 merged tokens
    ids = np.zeros((b, 64), np.int32)
    ids[:, 1], ids[:, 2:18], ids[:, 18] = cfg.vision_start_token_id, cfg.image_token_id, cfg.vision_end_token_id
    grid = np.array([[1, side, side]] * b)
    pixels = jax.ShapeDtypeStruct((b * side * side, cfg.vision.patch_dim), jnp.float32)
    cache = jax.eval_shape(lambda: init_cache(cfg, b, 80))

    prefill = lambda p, i, pv, c, lay: model.apply({"params": p}, i, c, pv, jnp.asarray(grid), vision_layout=lay,
                                                   method=Qwen2_5_VL.prefill)
    decode = lambda p, t, c: model.apply({"params": p}, t, c, method=Qwen2_5_VL.decode)
    layout = vision_layout(grid, cfg.vision)
    assert _bf16_share(flops_by_operand_dtypes(prefill, params, jnp.asarray(ids), pixels, cache, layout)) == 1.0
    assert _bf16_share(flops_by_operand_dtypes(decode, params, jnp.zeros((b,), jnp.int32), cache)) == 1.0


def test_sam2_large_matmuls_are_bf16():
    from segzero_jax.models.sam2 import get_preset, low_res_masks, random_params

    cfg = get_preset("hiera_large", dtype=jnp.bfloat16, param_dtype=jnp.float32)   # casts checked too
    params = jax.eval_shape(lambda k: random_params(cfg, k), jax.random.PRNGKey(0))
    s = cfg.image_size
    inputs = (jax.ShapeDtypeStruct((2, s, s, 3), jnp.float32), jnp.array([[100.0, 100.0, 500.0, 600.0]] * 2),
              jnp.array([[[200.0, 300.0], [300.0, 400.0]]] * 2), jnp.ones((2, 2), jnp.int32))
    by_dtype = flops_by_operand_dtypes(lambda *a: low_res_masks(*a, config=cfg), params, *inputs)
    # float32 stays only where the reference keeps it: Fourier prompt features and the
    # position-embedding / FPN resampling matrices, ~1e-4 of the work.
    assert _bf16_share(by_dtype) > 0.999
