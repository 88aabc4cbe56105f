"""Accelerator checks: the cuDNN attention backends (plain and packed) against XLA on a GPU, and
the accuracy of the bf16 SAM2 trunk's GELU in cuBLAS's epilogue.

Skipped where no GPU is attached (the CPU suite covers every other backend). Run on a GPU
machine with `JAX_PLATFORMS=cuda python -m pytest -q tests/test_gpu.py` (the test conftest
defaults JAX_PLATFORMS to cpu).
"""

import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models import layers

try:
    import pytest
except ImportError:  # a GPU machine without pytest runs this file as a script (see the end)
    pytest = None


CASES = [
    (4, 972, 972, 16, 2, 128, True, [972, 900, 500, 1]),   # policy prompt pass, grouped queries
    (8, 1, 1228, 16, 2, 128, False, [1228, 1000, 10, 1, 5, 6, 7, 8]),   # decode
    (2, 3600, 3600, 16, 16, 80, False, None),             # vision full attention
    (64, 64, 64, 2, 2, 72, False, None),                   # SAM2-Large windows
    (512, 16, 16, 4, 4, 72, False, None),                  # SAM2-Large 16-token windows: packed 8 to a row
    (512, 4, 16, 8, 8, 72, False, None),                   # pooled queries over 16-token windows: packed
]


if pytest is not None:
    pytestmark = pytest.mark.skipif(jax.default_backend() != "gpu", reason="needs a GPU (cuDNN attention)")
    cases = pytest.mark.parametrize("b,t,s,n,kh,h,causal,lengths", CASES)
else:
    cases = lambda fn: fn


@cases
def test_cudnn_attention_matches_xla(b, t, s, n, kh, h, causal, lengths):
    rs = np.random.RandomState(0)
    q, k, v = (jnp.asarray(rs.randn(*shape), jnp.bfloat16)
               for shape in ((b, t, n, h), (b, s, kh, h), (b, s, kh, h)))
    lens = None if lengths is None else jnp.asarray(lengths, jnp.int32)
    expected = "cudnn" if max(t, s) > 32 else "cudnn_packed"
    assert layers.resolve_attention_implementation("auto", q, kv_length=s,
                                                   lengths_or_causal=causal or lens is not None) == expected
    run = lambda impl: jax.jit(lambda q, k, v: layers.dot_product_attention(
        q, k, v, is_causal=causal, kv_lengths=lens, implementation=impl))(q, k, v)
    want = np.asarray(run("xla"), np.float32)
    for impl in {"cudnn", expected}:
        np.testing.assert_allclose(np.asarray(run(impl), np.float32), want, atol=2e-2, rtol=0, err_msg=impl)


def test_policy_and_sam2_on_cudnn_match_xla():
    import flax.linen as nn

    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, init_cache, preset
    from segzero_jax.models.qwen2_5_vl.model import init_params
    from segzero_jax.models.sam2 import Sam2, get_preset, random_params

    cfg = preset("tiny", dtype="bfloat16", param_dtype="bfloat16")
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    rs = np.random.RandomState(1)
    ids = jnp.asarray(rs.randint(0, 150000, (2, 256)), jnp.int32)
    mask = jnp.asarray(np.arange(256)[None] >= np.array([[0], [100]]), jnp.int32)   # left padding

    def policy(impl):
        model = Qwen2_5_VL(cfg.replace(attention_impl=impl))
        logits = model.apply({"params": params}, ids, attention_mask=mask)
        _, cache = model.apply({"params": params}, ids, init_cache(cfg, 2, 260), attention_mask=mask,
                               method=Qwen2_5_VL.prefill)
        step, _ = model.apply({"params": params}, ids[:, -1], cache, method=Qwen2_5_VL.decode)
        return logits, step

    valid = np.asarray(mask) > 0
    got, want = (jax.device_get(jax.jit(lambda i=impl: policy(i))()) for impl in ("auto", "xla"))
    for g, w in ((got[0][valid], want[0][valid]), (got[1], want[1])):
        assert np.abs(g - w).max() < 0.05 * np.abs(w).max()

    scfg = get_preset("hiera_tiny", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    sparams = random_params(scfg, jax.random.PRNGKey(2))
    images = jax.random.normal(jax.random.PRNGKey(3), (2, 1024, 1024, 3))

    def embed(impl):
        return Sam2(scfg.replace(attention_implementation=impl)).apply({"params": sparams}, images,
                                                                       method=Sam2.encode_image)["image_embed"]

    got, want = (np.asarray(jax.jit(lambda i=impl: embed(i))(), np.float32) for impl in ("auto", "xla"))
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_sam2_tanh_gelu_epilogue_keeps_bf16_accuracy():
    """On a GPU "auto" gives the bf16 trunk the tanh GELU, which cuBLAS applies in the fc1 matmul's
    epilogue: its low-res logits stay as close to the float32 model's (exact GELU, the reference
    function) as the exact form's in bf16."""
    from segzero_jax.models.sam2 import get_preset, low_res_masks, random_params

    cfg = get_preset("hiera_tiny")
    params = random_params(cfg, jax.random.PRNGKey(4))
    images = jax.random.normal(jax.random.PRNGKey(5), (2, 1024, 1024, 3))   # as after preprocess_image
    boxes = jnp.array([[100.0, 100.0, 500.0, 600.0]] * 2)
    points, labels = jnp.array([[[200.0, 300.0], [300.0, 400.0]]] * 2), jnp.ones((2, 2), jnp.int32)

    def logits(c):
        return np.asarray(jax.jit(lambda p: low_res_masks(p, images, boxes, points, labels, config=c)[0])(params),
                          np.float32)

    bf16 = cfg.replace(dtype=jnp.bfloat16)
    assert bf16.trunk_activation() == "gelu_pytorch_tanh"
    ref = logits(cfg)
    err = {form: float(np.abs(logits(bf16.replace(trunk_gelu=form)) - ref).mean()) for form in ("auto", "exact")}
    assert err["auto"] <= 1.25 * err["exact"], err


if __name__ == "__main__":   # for GPU machines without pytest
    if jax.default_backend() != "gpu":
        raise SystemExit("no GPU: nothing to check")
    for case in CASES:
        test_cudnn_attention_matches_xla(*case)
        print("ok attention", case[:6])
    test_policy_and_sam2_on_cudnn_match_xla()
    print("ok policy and sam2")
    test_sam2_tanh_gelu_epilogue_keeps_bf16_accuracy()
    print("ok sam2 tanh GELU in bf16")
