"""The unscanned decoder layout (`scan_layers=False`): one module and one KV-cache buffer per
layer. Greedy decoding equals transformers' generate; params convert both ways and through
the HF converter; remat and sharding give the scanned layout's values."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from segzero_jax.models.qwen2_5_vl import (Qwen2_5_VL, abstract_params, cache_capacity, cache_logical_axes,
                                          dummy_inputs, export_hf, init_cache, load_hf, stack_layers,
                                          unstack_layers)
from segzero_jax.models.qwen2_5_vl.cache import is_axes
from segzero_jax.models.qwen2_5_vl.convert_rules import canonical_name
from segzero_jax.models.qwen2_5_vl.model import init_params
from segzero_jax.parallel import DEFAULT_RULES, logical_shardings, make_mesh, named_sharding, sharded_init
from tests.models.qwen2_5_vl.hf_reference import hf_generate, image_batch, left_pad
from tests.models.qwen2_5_vl.test_qwen_generate import greedy

NEW = 12


@pytest.fixture(scope="module")
def unscanned(ours_tied):
    cfg, params = ours_tied
    return cfg.replace(scan_layers=False), unstack_layers(params)


@pytest.fixture(scope="module")
def prompts():
    return image_batch(np.random.RandomState(21), [[1, 6, 8], [1, 4, 6]], [(5, 2), (1, 7)])


@pytest.mark.parity
@pytest.mark.slow
def test_unscanned_greedy_matches_generate(hf_tied, unscanned, prompts):
    model, _ = hf_tied
    cfg, params = unscanned
    ids, mask, pixels, grid = prompts
    toks, _ = greedy(cfg, grid, NEW)(params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                                     jnp.asarray(mask, jnp.int32))
    np.testing.assert_array_equal(np.asarray(toks), hf_generate(model, ids, mask, NEW, pixels, grid))


def test_layouts_convert_both_ways(ours_tied, unscanned):
    cfg, params = ours_tied
    ucfg, uparams = unscanned
    abstract = abstract_params(ucfg)
    assert jax.tree.structure(abstract) == jax.tree.structure(uparams)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), abstract, uparams)
    dec = uparams["language_model"]["decoder"]
    assert sorted(dec) == ["layers_0", "layers_1"]
    stacked = params["language_model"]["decoder"]["layers"]["layer"]["q"]["kernel"]
    assert np.shares_memory(dec["layers_1"]["q"]["kernel"], stacked)   # numpy: views, no copy
    np.testing.assert_array_equal(dec["layers_1"]["q"]["kernel"], stacked[1])
    jax.tree.map(np.testing.assert_array_equal, stack_layers(uparams), params)
    on_device = stack_layers(unstack_layers(jax.device_put(params)))
    jax.tree.map(np.testing.assert_array_equal, on_device, params)
    assert uparams["visual"] is params["visual"]
    with pytest.raises(ValueError, match="not in the scanned layout"):
        unstack_layers(uparams)
    with pytest.raises(ValueError, match="not in the unscanned layout"):
        stack_layers(params)
    with pytest.raises(ValueError, match="not a Qwen2.5-VL param tree"):
        unstack_layers({"params": {}})


def test_load_and_export_in_the_unscanned_layout(hf_tied, unscanned, tmp_path):
    _, path = hf_tied
    ucfg, uparams = unscanned
    cfg2, loaded = load_hf(path, scan_layers=False)
    assert not cfg2.scan_layers
    jax.tree.map(np.testing.assert_array_equal, loaded, uparams)
    export_hf(ucfg, uparams, str(tmp_path))
    ours = load_file(str(tmp_path / "model.safetensors"))
    ref = {canonical_name(k): v for k, v in load_file(f"{path}/model.safetensors").items()}
    assert {canonical_name(k) for k in ours} == set(ref)
    for name, value in ours.items():
        np.testing.assert_array_equal(value, ref[canonical_name(name)], err_msg=name)


def test_load_onto_shardings_in_the_unscanned_layout(hf_tied, unscanned):
    _, path = hf_tied
    ucfg, uparams = unscanned
    boxed = jax.eval_shape(lambda r: init_params(ucfg, r), jax.random.key(0))
    _, params = load_hf(path, scan_layers=False, shardings=logical_shardings(boxed, make_mesh((2, 2, 2))))
    q = params["language_model"]["decoder"]["layers_1"]["q"]["kernel"]   # [D, N, H]
    assert isinstance(q, jax.Array) and q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
    assert q.addressable_shards[0].data.shape == (32, 2, 16)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params), uparams)


def test_unscanned_cache_layout_and_errors(ours_tied, unscanned):
    cfg, params = ours_tied
    ucfg, uparams = unscanned
    t = ucfg.text
    cache = init_cache(ucfg, 3, 10)
    assert isinstance(cache["k"], tuple) and len(cache["k"]) == t.num_layers
    assert all(a.shape == (3, 10, t.num_kv_heads, t.head_dim) for a in cache["k"] + cache["v"])
    assert cache_capacity(cache) == 10 == cache_capacity(init_cache(cfg, 3, 10))
    axes = cache_logical_axes(ucfg)
    assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(cache)
    jax.tree.map(lambda ax, a: np.testing.assert_equal(len(ax), a.ndim), axes, cache, is_leaf=is_axes)
    ids = jnp.asarray([[5, 6, 7]], jnp.int32)
    with pytest.raises(ValueError, match="one stacked array but config.scan_layers=False needs per-layer"):
        Qwen2_5_VL(ucfg).apply({"params": uparams}, ids, init_cache(cfg, 1, 8), method=Qwen2_5_VL.prefill)
    with pytest.raises(ValueError, match="per-layer buffers but config.scan_layers=True"):
        Qwen2_5_VL(cfg).apply({"params": params}, jnp.asarray([5], jnp.int32), init_cache(ucfg, 1, 8),
                              method=Qwen2_5_VL.decode)


@pytest.mark.slow
def test_unscanned_remat_gradients_equal_scanned(ours_tied, unscanned, prompts):
    cfg, params = ours_tied
    ucfg, uparams = unscanned
    ids, mask, pixels, grid = prompts

    def loss(p, c):
        return jnp.mean(Qwen2_5_VL(c).apply({"params": p}, ids, pixels, grid, mask)[..., :512] ** 2)

    ref_v, ref_g = jax.jit(jax.value_and_grad(functools.partial(loss, c=cfg)))(params)
    v, g = jax.jit(jax.value_and_grad(functools.partial(loss, c=ucfg.replace(remat_policy="full"))))(uparams)
    np.testing.assert_allclose(v, ref_v, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), stack_layers(g), ref_g)


@pytest.mark.slow
def test_sharded_unscanned_decode_equals_unsharded(ours_tied, unscanned):
    """Per-layer params and cache buffers sharded on a (data 2, fsdp 2, tensor 2) mesh; the
    params are the training layout's, unstacked on device (each layer keeps its sharding)."""
    cfg = unscanned[0]
    mesh = make_mesh((2, 2, 2))
    init = lambda rng: Qwen2_5_VL(ours_tied[0]).init(rng, **dummy_inputs(cfg))["params"]
    boxed, _ = sharded_init(init, mesh, DEFAULT_RULES, jax.random.key(3))
    params = jax.jit(unstack_layers)(nn.unbox(boxed))
    q = params["language_model"]["decoder"]["layers_1"]["q"]["kernel"]
    assert q.sharding.is_equivalent_to(jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        "fsdp", "tensor", None)), q.ndim)
    rs = np.random.RandomState(22)
    ids, mask = left_pad([list(rs.randint(0, 150000, n)) for n in (7, 3, 5, 6)])
    ids, mask = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)
    model = Qwen2_5_VL(cfg)

    def run(p, cache):
        logits, cache = model.apply({"params": p}, ids, cache, attention_mask=mask, method=Qwen2_5_VL.prefill)
        out = [logits]
        for _ in range(3):
            logits, cache = model.apply({"params": p}, jnp.argmax(logits, -1).astype(jnp.int32), cache,
                                        method=Qwen2_5_VL.decode)
            out.append(logits)
        return jnp.stack(out, 1), cache

    ref, _ = jax.jit(run)(jax.device_get(params), init_cache(cfg, 4, 10))
    cache = init_cache(cfg, 4, 10)
    shardings = jax.tree.map(lambda ax, a: named_sharding(ax, a.shape, mesh, DEFAULT_RULES),
                             cache_logical_axes(cfg), cache, is_leaf=is_axes)
    cache = jax.device_put(cache, shardings)
    with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
        out, filled = jax.jit(run, donate_argnums=(1,))(params, cache)
    for got, want in zip(filled["k"] + filled["v"], shardings["k"] + shardings["v"]):
        assert got.sharding.is_equivalent_to(want, got.ndim), (got.sharding, want)
    assert len(filled["k"][0].sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)
