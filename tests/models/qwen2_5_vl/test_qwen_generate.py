"""KV cache: greedy decoding equals transformers' generate(do_sample=False) token for token."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, init_cache
from tests.models.qwen2_5_vl.hf_reference import hf_generate, image_batch, left_pad

NEW = 20


def greedy(cfg, grid, n_new):
    """jit(prefill + scan of one-token decode steps) -> (tokens int32[B, n], logits float32[B, n, V])."""
    model = Qwen2_5_VL(cfg)
    grid = None if grid is None else np.asarray(grid)

    @jax.jit
    def run(params, ids, pixels, mask):
        cache = init_cache(cfg, ids.shape[0], ids.shape[1] + n_new)
        logits, cache = model.apply({"params": params}, ids, cache, pixels, grid, mask,
                                    method=Qwen2_5_VL.prefill)

        def step(carry, _):
            logits, cache = carry
            tok = jnp.argmax(logits, -1).astype(jnp.int32)
            new_logits, cache = model.apply({"params": params}, tok, cache, method=Qwen2_5_VL.decode)
            return (new_logits, cache), (tok, logits)

        _, (toks, all_logits) = jax.lax.scan(step, (logits, cache), None, length=n_new)
        return toks.T, jnp.swapaxes(all_logits, 0, 1)

    return run


@pytest.fixture(scope="module")
def prompts():
    return image_batch(np.random.RandomState(11), [[1, 10, 14], [1, 4, 6]], [(3, 4), (9, 6)])


@pytest.fixture(scope="module")
def ours_greedy(ours_tied, prompts):
    cfg, params = ours_tied
    ids, mask, pixels, grid = prompts
    toks, logits = greedy(cfg, grid, NEW)(params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels),
                                          jnp.asarray(mask, jnp.int32))
    return np.asarray(toks), np.asarray(logits)


@pytest.mark.parity
@pytest.mark.slow
def test_greedy_matches_generate(hf_tied, prompts, ours_greedy):
    model, _ = hf_tied
    ids, mask, pixels, grid = prompts
    ref = hf_generate(model, ids, mask, NEW, pixels, grid)
    assert ref.shape == (2, NEW)
    np.testing.assert_array_equal(ours_greedy[0], ref)


def test_decode_logits_equal_full_forward(ours_tied, prompts, ours_greedy):
    """Each cached decode step gives the logits of a full forward over prompt + generated."""
    cfg, params = ours_tied
    ids, mask, pixels, grid = prompts
    toks, logits = ours_greedy
    full_ids = np.concatenate([ids, toks], 1)
    full_mask = np.concatenate([mask, np.ones_like(toks)], 1)
    full = jax.jit(lambda p, i, pv, m: Qwen2_5_VL(cfg).apply({"params": p}, i, pv, grid, m))(
        params, jnp.asarray(full_ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(full_mask, jnp.int32))
    t = ids.shape[1]
    np.testing.assert_allclose(logits, np.asarray(full)[:, t - 1:t - 1 + NEW], atol=1e-4, rtol=0)


@pytest.mark.parity
@pytest.mark.slow
def test_text_only_greedy_matches_generate(hf_tied, ours_tied):
    model, _ = hf_tied
    cfg, params = ours_tied
    rs = np.random.RandomState(12)
    ids, mask = left_pad([list(rs.randint(0, 150000, 9)), list(rs.randint(0, 150000, 4))])
    toks, _ = greedy(cfg, None, NEW)(params, jnp.asarray(ids, jnp.int32), None, jnp.asarray(mask, jnp.int32))
    np.testing.assert_array_equal(np.asarray(toks), hf_generate(model, ids, mask, NEW))
