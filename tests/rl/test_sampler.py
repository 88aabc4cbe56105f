"""The group sampler: transformers' greedy generate, full-forward logits, shared prompt keys,
sampling statistics, early stop and sharding."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from segzero_jax.models.qwen2_5_vl import (Qwen2_5_VL, dummy_inputs, group_cache, init_cache, preset,
                                           vision_layout)
from segzero_jax.parallel import DEFAULT_RULES, make_mesh, sharded_init
from segzero_jax.rl.sampler import SamplingConfig, choose_tokens, filter_logits, make_sampler, sample
from tests.models.qwen2_5_vl.hf_reference import build_hf_model, image_batch

NEW = 12


@pytest.fixture(scope="module")
def hf_and_ours(tmp_path_factory):
    from segzero_jax.models.qwen2_5_vl import load_hf
    model = build_hf_model(tie=True, seed=3)
    path = tmp_path_factory.mktemp("qwen_sampler")
    model.save_pretrained(str(path))
    return model, load_hf(str(path))


@pytest.fixture(scope="module")
def prompts():
    """Two left-padded prompts of different lengths, one image each."""
    ids, mask, pixels, grid = image_batch(np.random.RandomState(5), [[1, 6, 8], [1, 4, 6]], [(3, 4), (9, 2)])
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
            "pixel_values": pixels, "image_grid_thw": grid.astype(np.int32)}


def hf_greedy(model, batch, n_new, eos=None, pad=0):
    import torch
    ids = batch["input_ids"].astype(np.int64)
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(batch["attention_mask"]),
                             pixel_values=torch.tensor(batch["pixel_values"]),
                             image_grid_thw=torch.tensor(batch["image_grid_thw"]),
                             mm_token_type_ids=torch.tensor((ids == 151655).astype(np.int64)),
                             max_new_tokens=n_new, do_sample=False, eos_token_id=eos, pad_token_id=pad)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["unscanned", "scanned"])
def test_greedy_equals_transformers_generate_with_two_stop_tokens(hf_and_ours, prompts, layout):
    model, (cfg, params) = hf_and_ours
    free = hf_greedy(model, prompts, NEW)
    # Two stop ids that the greedy rows really emit, at different steps of each row.
    stop_a, stop_b = int(free[0, 4]), int(free[1, 7])
    assert stop_a != stop_b
    ref = hf_greedy(model, prompts, NEW, eos=[stop_a, stop_b], pad=7)
    sc = SamplingConfig(max_new_tokens=NEW, greedy=True, stop_token_ids=(stop_a, stop_b), pad_id=7,
                        decode_layout=layout)
    out = make_sampler(cfg, sc)(params, prompts, jax.random.key(0))
    tokens = np.asarray(out.tokens)
    width = ref.shape[1]           # generate stops when every row has finished
    np.testing.assert_array_equal(tokens[:, :width], ref)
    assert (tokens[:, width:] == 7).all()
    first_stop = [int(np.flatnonzero(np.isin(r, [stop_a, stop_b]))[0]) for r in free]
    np.testing.assert_array_equal(np.asarray(out.lengths), np.array(first_stop) + 1)
    assert np.asarray(out.stopped).all()
    assert int(out.num_steps) == max(first_stop)


def test_default_stop_tokens_are_qwen_end_tokens():
    assert SamplingConfig().stop_token_ids == (151645, 151643)
    with pytest.raises(ValueError, match="group_size"):
        SamplingConfig(group_size=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)


def _grouped_decode_logits(cfg, params, batch, tokens, n):
    """Logits of each grouped decode step fed `tokens` int32[B*n, S] (teacher forcing)."""
    model = Qwen2_5_VL(cfg)
    layout = vision_layout(batch["image_grid_thw"], cfg.vision)

    @jax.jit
    def run(params, ids, mask, pixels, grid, tokens, layout):
        pc = init_cache(cfg, ids.shape[0], ids.shape[1])
        first, pc = model.apply({"params": params}, ids, pc, pixels, grid, mask, vision_layout=layout,
                                method=Qwen2_5_VL.prefill)
        cache = group_cache(cfg, pc, n, tokens.shape[1])

        def step(cache, tok):
            logits, cache = model.apply({"params": params}, tok, cache, pc, method=Qwen2_5_VL.decode)
            return cache, logits

        _, logits = jax.lax.scan(step, cache, tokens.T)
        return first, jnp.swapaxes(logits, 0, 1)

    return run(params, batch["input_ids"], batch["attention_mask"], batch["pixel_values"],
               batch["image_grid_thw"], tokens, layout)


def _full_logits(cfg, params, batch, tokens, n):
    """Full forward over prompt (repeated n times) + `tokens`: logits at each response position."""
    ids = np.repeat(batch["input_ids"], n, 0)
    mask = np.repeat(batch["attention_mask"], n, 0)
    seq = np.concatenate([ids, np.asarray(tokens)], 1)
    full_mask = np.concatenate([mask, np.ones_like(tokens)], 1)
    pixels = np.concatenate([batch["pixel_values"][_image_slice(batch, b)] for b in range(len(ids) // n)
                             for _ in range(n)])
    grid = np.repeat(batch["image_grid_thw"], n, 0)
    out = Qwen2_5_VL(cfg).apply({"params": params}, jnp.asarray(seq), jnp.asarray(pixels), grid,
                                jnp.asarray(full_mask))
    t = ids.shape[1]
    return np.asarray(out[:, t - 1:])


def _image_slice(batch, b):
    sizes = np.prod(batch["image_grid_thw"], axis=1)
    start = int(sizes[:b].sum())
    return slice(start, start + int(sizes[b]))


@pytest.mark.slow
def test_grouped_decode_logits_equal_full_forward(hf_and_ours, prompts):
    _, (cfg, params) = hf_and_ours
    n = 3
    rs = np.random.RandomState(0)
    tokens = rs.randint(0, 3000, (2 * n, 6)).astype(np.int32)
    first, steps = _grouped_decode_logits(cfg, params, prompts, tokens, n)
    full = _full_logits(cfg, params, prompts, tokens, n)
    scale = np.abs(full).mean()
    np.testing.assert_allclose(np.repeat(np.asarray(first), n, 0), full[:, 0], atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(np.asarray(steps), full[:, 1:], atol=1e-4 * scale, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["unscanned", "scanned"])
def test_shared_prompt_equals_copied_prompt_cache(hf_and_ours, prompts, layout):
    _, (cfg, params) = hf_and_ours
    kw = dict(group_size=4, max_new_tokens=10, temperature=1.0, decode_layout=layout)
    key = jax.random.key(3)
    shared = make_sampler(cfg, SamplingConfig(**kw))(params, prompts, key)
    copied = make_sampler(cfg, SamplingConfig(shared_prompt=False, **kw))(params, prompts, key)
    np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(copied.tokens))
    np.testing.assert_allclose(np.asarray(shared.log_probs), np.asarray(copied.log_probs), atol=1e-5, rtol=0)
    # the n samples of a prompt differ (they are drawn, not copied)
    assert len({tuple(r) for r in np.asarray(shared.tokens)[:4]}) > 1


@pytest.mark.slow
def test_log_probs_equal_full_forward_log_softmax(hf_and_ours, prompts):
    _, (cfg, params) = hf_and_ours
    n, temp = 2, 0.7
    out = make_sampler(cfg, SamplingConfig(group_size=n, max_new_tokens=8, temperature=temp))(
        params, prompts, jax.random.key(11))
    tokens = np.asarray(out.tokens)
    logits = _full_logits(cfg, params, prompts, tokens, n)[:, :-1] / temp
    ref = np.take_along_axis(jax.nn.log_softmax(logits, -1), tokens[..., None], -1)[..., 0]
    valid = np.arange(tokens.shape[1])[None] < np.asarray(out.lengths)[:, None]
    np.testing.assert_allclose(np.asarray(out.log_probs)[valid], ref[valid], atol=1e-4, rtol=0)
    assert (np.asarray(out.log_probs)[~valid] == 0).all()


def test_same_key_same_samples_other_key_other_samples(hf_and_ours, prompts):
    _, (cfg, params) = hf_and_ours
    fn = make_sampler(cfg, SamplingConfig(group_size=2, max_new_tokens=6))
    a, b = fn(params, prompts, jax.random.key(1)), fn(params, prompts, jax.random.key(1))
    c = fn(params, prompts, jax.random.key(2))
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert (np.asarray(a.tokens) != np.asarray(c.tokens)).any()


def _small_vocab_model(vocab=12, seed=0):
    cfg = preset("tiny").replace(text=dataclasses.replace(preset("tiny").text, vocab_size=vocab))
    params = nn.unbox(Qwen2_5_VL(cfg).init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"])
    # Spread the logits so the softmax is far from uniform.
    params = jax.tree.map(lambda a: a * 2.0 if a.ndim == 2 and a.shape[0] == vocab else a, params)
    return cfg, params


@pytest.mark.slow
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_frequencies_match_the_softmax(temperature):
    """Chi-square of the first and second drawn tokens of 6,000 samples against the softmax."""
    cfg, params = _small_vocab_model()
    batch = {"input_ids": np.array([[3, 5, 7, 1]], np.int32), "attention_mask": np.ones((1, 4), np.int32)}
    n = 6000
    sc = SamplingConfig(group_size=n, max_new_tokens=2, temperature=temperature, stop_token_ids=(99,), pad_id=0)
    out = jax.jit(lambda p, k: sample(cfg, p, batch, k, sc))(params, jax.random.key(5))
    tokens = np.asarray(out.tokens)
    logits = Qwen2_5_VL(cfg).apply({"params": params}, jnp.asarray(batch["input_ids"]))[0, -1]
    probs = np.asarray(jax.nn.softmax(logits / temperature), np.float64)
    probs /= probs.sum()
    assert probs.max() < 0.9
    counts = np.bincount(tokens[:, 0], minlength=probs.size)
    assert stats.chisquare(counts, probs * n).pvalue > 1e-3
    # second token: for the rows whose first token was the most frequent one
    top = int(np.argmax(counts))
    seq = jnp.asarray([[3, 5, 7, 1, top]], jnp.int32)
    p2 = np.asarray(jax.nn.softmax(Qwen2_5_VL(cfg).apply({"params": params}, seq)[0, -1] / temperature), np.float64)
    p2 /= p2.sum()
    sel = tokens[tokens[:, 0] == top, 1]
    assert stats.chisquare(np.bincount(sel, minlength=p2.size), p2 * sel.size).pvalue > 1e-3
    # the returned log-probs are those of the softmax
    np.testing.assert_allclose(np.asarray(out.log_probs)[:, 0], np.log(probs[tokens[:, 0]]), atol=1e-5)


def test_top_k_and_top_p_stay_in_the_kept_set():
    rs = np.random.RandomState(0)
    logits = jnp.asarray(rs.randn(64, 40).astype(np.float32) * 2)
    for top_k, top_p in [(5, 1.0), (0, 0.5), (7, 0.8), (1, 1.0)]:
        sc = SamplingConfig(top_k=top_k, top_p=top_p)
        kept = np.asarray(jnp.isfinite(filter_logits(logits, top_k, top_p)))
        probs = np.asarray(jax.nn.softmax(logits, -1))
        order = np.argsort(-probs, -1)
        for r in range(4):
            k_set = set(order[r, :top_k]) if top_k else set(range(40))
            if top_p < 1:
                cum = np.cumsum(probs[r, order[r]])
                p_set = set(order[r, :int(np.searchsorted(cum, top_p)) + 1])
            else:
                p_set = set(range(40))
            want = k_set & p_set if top_k == 0 or top_p == 1 else None
            if want is not None:
                assert set(np.flatnonzero(kept[r])) == want
        for i in range(20):
            tok, _ = choose_tokens(logits, jax.random.key(i), sc)
            assert kept[np.arange(64), np.asarray(tok)].all()


@pytest.mark.slow
def test_rows_that_stop_early_run_fewer_steps(hf_and_ours, prompts):
    _, (cfg, params) = hf_and_ours
    greedy = make_sampler(cfg, SamplingConfig(max_new_tokens=NEW, greedy=True, stop_token_ids=(99999,)))(
        params, prompts, jax.random.key(0))
    assert int(greedy.num_steps) == NEW - 1 and not np.asarray(greedy.stopped).any()
    toks = np.asarray(greedy.tokens)
    stop = (int(toks[0, 2]), int(toks[1, 3]))
    early = make_sampler(cfg, SamplingConfig(max_new_tokens=NEW, greedy=True, stop_token_ids=stop))(
        params, prompts, jax.random.key(0))
    first = [int(np.flatnonzero(np.isin(r, stop))[0]) for r in toks]
    assert int(early.num_steps) == max(first) < NEW - 1


@pytest.mark.slow
def test_sharded_greedy_equals_single_device(hf_and_ours):
    _, (cfg, host_params) = hf_and_ours
    mesh = make_mesh((2, 2, 2))
    init = lambda rng: Qwen2_5_VL(cfg).init(rng, **dummy_inputs(cfg))["params"]
    _, shardings = sharded_init(init, mesh, DEFAULT_RULES, jax.random.key(0))
    params = jax.device_put(host_params, nn.unbox(shardings))
    ids, mask, pixels, grid = image_batch(np.random.RandomState(8), [[1, 4, 4]] * 4, [(2, 3), (5, 1), (1, 1), (4, 4)])
    batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask.astype(np.int32),
             "pixel_values": pixels, "image_grid_thw": grid.astype(np.int32)}
    sc = SamplingConfig(group_size=2, max_new_tokens=8, greedy=True)
    ref = make_sampler(cfg, sc)(host_params, batch, jax.random.key(0))
    out = make_sampler(cfg, sc, mesh=mesh)(params, batch, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(ref.tokens))
    np.testing.assert_allclose(np.asarray(out.log_probs), np.asarray(ref.log_probs), atol=1e-5)
