"""FLOP counts against XLA's own cost analysis of the compiled function (2*M*N*K per dot, two per
multiply-add of a convolution), on functions without element-wise work so that the two agree
exactly; scans against their unrolled form; gradients against the count worked out by hand."""

import jax
import jax.numpy as jnp
import pytest

from segzero_jax.flops import count_flops


def _xla_flops(fn, *args) -> int:
    return int(jax.jit(fn).lower(*args).compile().cost_analysis()["flops"])


def _arrays(*shapes):
    keys = jax.random.split(jax.random.key(0), len(shapes))
    return [jax.random.normal(k, s) for k, s in zip(keys, shapes)]


def test_dot_general_with_batch_and_multiple_contracting_dims():
    fn = lambda a, b, c: jnp.einsum("btnh,bsnh->bnts", jnp.einsum("btd,dnh->btnh", a, b), c)
    args = _arrays((2, 7, 16), (16, 3, 5), (2, 11, 3, 5))
    assert count_flops(fn, *args) == _xla_flops(fn, *args) == 2 * (2 * 7 * 3 * 5 * 16 + 2 * 3 * 7 * 11 * 5)


@pytest.mark.parametrize("layout,x_shape,w_shape,kwargs", [
    (("NHWC", "HWIO", "NHWC"), (2, 16, 16, 3), (7, 7, 3, 8), dict(window_strides=(4, 4), padding=((3, 3), (3, 3)))),
    (("NCHW", "OIHW", "NCHW"), (1, 4, 9, 9), (6, 4, 1, 1), dict(window_strides=(1, 1), padding="VALID")),
    (("NHWC", "HWIO", "NHWC"), (1, 8, 8, 4), (2, 2, 4, 6),    # transposed conv: dilated input
     dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), lhs_dilation=(2, 2), rhs_dilation=(1, 1))),
    (("NCHW", "OIHW", "NCHW"), (2, 6, 9, 9), (4, 3, 3, 3),     # grouped, dilated kernel
     dict(window_strides=(2, 1), padding=((2, 1), (0, 2)), rhs_dilation=(2, 1), feature_group_count=2)),
])
def test_convolution(layout, x_shape, w_shape, kwargs):
    fn = lambda x, w: jax.lax.conv_general_dilated(x, w, dimension_numbers=layout, **kwargs)
    args = _arrays(x_shape, w_shape)
    assert count_flops(fn, *args) == _xla_flops(fn, *args) > 0


def test_convolution_skips_padding_and_dilation_holes():
    """Patch embedding with padding and a 2x2 / stride-2 transposed convolution (SAM2's upscaling)."""
    patch = lambda x, w: jax.lax.conv_general_dilated(x, w, (4, 4), ((3, 3), (3, 3)),
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    args = _arrays((2, 16, 16, 3), (7, 7, 3, 8))
    assert count_flops(patch, *args) == _xla_flops(patch, *args) < 2 * (2 * 4 * 4 * 8) * (7 * 7 * 3)

    up = lambda x, w: jax.lax.conv_transpose(x, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, w = _arrays((3, 8, 8, 4), (2, 2, 4, 6))
    # Every input pixel meets every tap once: 2 x pixels x C_in x C_out x k^2.
    assert count_flops(up, x, w) == _xla_flops(up, x, w) == 2 * 3 * 64 * 4 * 6 * 4


def test_scan_counts_its_body_length_times():
    def scanned(x, ws):
        return jax.lax.scan(lambda c, w: (c @ w, None), x, ws)[0]

    def unrolled(x, ws):
        for i in range(ws.shape[0]):
            x = x @ ws[i]
        return x

    x, ws = _arrays((8, 32), (6, 32, 32))
    assert count_flops(scanned, x, ws) == count_flops(unrolled, x, ws) == _xla_flops(unrolled, x, ws)
    assert count_flops(scanned, x, ws) == 6 * 2 * 8 * 32 * 32


def test_gradient_with_remat_counts_the_recomputation():
    def loss(w, x, remat):
        layer = lambda h, w: (h @ w) @ w.T
        return jnp.sum(jax.checkpoint(layer)(x, w) if remat else layer(x, w))

    w, x = _arrays((32, 16), (8, 32))
    matmul = 2 * 8 * 32 * 16
    count = lambda remat: count_flops(jax.value_and_grad(lambda w, x: loss(w, x, remat)), w, x)
    # forward: 2 matmuls; backward: d(h w) and d(w^T) for the second, d(w) for the first (x is
    # not differentiated); remat recomputes h @ w inside the backward.
    assert count(False) == 5 * matmul
    assert count(True) == 6 * matmul


def test_shard_map_body_counts_once_per_shard():
    """The body is written for one shard: a (2, 2) mesh runs it four times, on a quarter each."""
    from jax.sharding import NamedSharding, PartitionSpec as P

    mesh = jax.make_mesh((2, 2), ("a", "b"))
    fn = jax.shard_map(lambda x, w: x @ w, mesh=mesh, in_specs=(P(("a", "b")), P()), out_specs=P(("a", "b")))
    x = jax.ShapeDtypeStruct((8, 16), jnp.float32, sharding=NamedSharding(mesh, P(("a", "b"))))
    w = jax.ShapeDtypeStruct((16, 4), jnp.float32, sharding=NamedSharding(mesh, P()))
    with jax.set_mesh(mesh):
        assert count_flops(fn, x, w) == count_flops(lambda x, w: x @ w, x, w) == 2 * 8 * 16 * 4


def test_cond_counts_the_costlier_branch():
    fn = lambda p, x, w: jax.lax.cond(p, lambda: x @ w @ w, lambda: x @ w)
    args = [jnp.bool_(True), *_arrays((4, 8), (8, 8))]
    assert count_flops(fn, *args) == 2 * 2 * 4 * 8 * 8


@pytest.mark.parametrize("strides,padding", [((1, 1), ((1, 1), (1, 1))), ((4, 4), ((3, 3), (3, 3)))])
def test_convolution_backward_passes(strides, padding):
    """The transposes of a convolution (its gradients) are convolutions XLA must count alike."""
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, padding,
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    x, w = _arrays((2, 16, 16, 3), (7, 7, 3, 8))
    g = jnp.ones(jax.eval_shape(conv, x, w).shape)
    d_input = lambda w, g: jax.linear_transpose(lambda x: conv(x, w), x)(g)[0]
    d_kernel = lambda x, g: jax.linear_transpose(lambda w: conv(x, w), w)(g)[0]
    assert count_flops(d_input, w, g) == _xla_flops(d_input, w, g) > 0
    assert count_flops(d_kernel, x, g) == _xla_flops(d_kernel, x, g) > 0


def test_split_by_operand_dtypes():
    from segzero_jax.flops import flops_by_operand_dtypes

    def fn(x, w):
        h = jnp.dot(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
        return h @ w                                     # float32 x float32
    x, w = _arrays((4, 8), (8, 8))
    assert flops_by_operand_dtypes(fn, x, w) == {("bfloat16", "bfloat16"): 2 * 4 * 8 * 8,
                                                 ("float32", "float32"): 2 * 4 * 8 * 8}
