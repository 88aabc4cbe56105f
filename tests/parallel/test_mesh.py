"""Mesh construction and logical-axis sharding on 8 fake CPU devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segzero_jax.models import layers
from segzero_jax.parallel import DEFAULT_RULES, make_mesh, sharded_init
from segzero_jax.parallel.mesh import resolve_mesh_shape


def test_eight_devices_visible():
    assert jax.device_count() == 8


@pytest.mark.parametrize("shape,expected", [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)),
                                            ((1, 1, 8), (1, 1, 8))])
def test_resolve_mesh_shape(shape, expected):
    assert resolve_mesh_shape(shape, 8) == expected


@pytest.mark.parametrize("shape", [(3, -1, 1), (-1, -1, 1), (2, 2, 1), (0, 8, 1)])
def test_resolve_mesh_shape_rejects(shape):
    with pytest.raises(ValueError, match="mesh_shape"):
        resolve_mesh_shape(shape, 8)


def test_make_mesh_axes():
    mesh = make_mesh((2, 2, 2))
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.devices.shape == (2, 2, 2)
    assert sorted(d.id for d in mesh.devices.flat) == list(range(8))



class _Mlp(nn.Module):
    """A two-matmul block annotated with logical axes, as the models are."""

    @nn.compact
    def __call__(self, x):
        w_in = layers.logical_param(self, "w_in", nn.initializers.normal(0.1), (16, 32),
                                    ("embed", "mlp"), jnp.float32)
        w_out = layers.logical_param(self, "w_out", nn.initializers.normal(0.1), (32, 16),
                                     ("mlp", "embed"), jnp.float32)
        h = layers.constrain(jnp.einsum("BD,DF->BF", x, w_in), ("act_batch", "act_mlp"))
        return jnp.einsum("BF,FD->BD", jax.nn.gelu(h), w_out)


def test_sharded_init_places_params_by_rules():
    mesh = make_mesh((2, 2, 2))
    model = _Mlp()
    x = jnp.ones((8, 16))
    boxed, shardings = sharded_init(lambda: model.init(jax.random.key(0), x), mesh, DEFAULT_RULES)
    w_in = boxed["params"]["w_in"].value
    assert w_in.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert w_in.addressable_shards[0].data.shape == (8, 16)
    params = nn.unbox(boxed)
    plain = nn.unbox(model.init(jax.random.key(0), x))
    np.testing.assert_allclose(np.asarray(params["params"]["w_in"]), np.asarray(plain["params"]["w_in"]),
                               atol=1e-6)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        sharded_out = jax.jit(model.apply)(params, x)
    np.testing.assert_allclose(np.asarray(sharded_out), np.asarray(model.apply(plain, x)), rtol=1e-6)


def test_constrain_places_activations_by_rules():
    mesh = make_mesh((2, 2, 2))
    x = jnp.arange(8 * 6, dtype=jnp.float32).reshape(8, 6)
    np.testing.assert_array_equal(np.asarray(layers.constrain(x, ("act_batch", None))), np.asarray(x))

    def f(x):
        return layers.constrain(x * 2.0, ("act_batch", "act_mlp"))

    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out = jax.jit(f)(x)
    assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(np.asarray(out), 2.0 * np.asarray(x))


def test_attention_backends_resolve_on_cpu():
    q = jnp.zeros((1, 4, 2, 8), jnp.bfloat16)
    assert layers.resolve_attention_implementation("auto", q) == "xla"
    with pytest.raises(ValueError, match="attention implementation"):
        layers.resolve_attention_implementation("flash", q)


def test_indivisible_dims_are_replicated():
    from segzero_jax.parallel import logical_shardings
    mesh = make_mesh((1, 2, 4))
    boxed = {"kv": nn.Partitioned(jax.ShapeDtypeStruct((16, 2, 8), jnp.float32),
                                  names=("embed", "kv_heads", "head_dim")),
             "q": nn.Partitioned(jax.ShapeDtypeStruct((16, 8, 8), jnp.float32),
                                 names=("embed", "heads", "head_dim"))}
    shardings = logical_shardings(boxed, mesh)
    # 2 kv heads cannot split over tensor=4: replicated there, still fsdp-sharded on embed.
    assert shardings["kv"].spec == jax.sharding.PartitionSpec("fsdp", None, None)
    assert shardings["q"].spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
