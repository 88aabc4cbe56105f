"""Float32 parity with transformers' Qwen2_5_VLForConditionalGeneration (tiny random weights)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, get_rope_index
from tests.models.qwen2_5_vl.hf_reference import IMG, image_row, left_pad
from tests.tolerance import assert_parity

pytestmark = pytest.mark.parity


def _forward(cfg, params, ids, pixel_values, grid, mask):
    """Jitted forward with the (host) grid closed over."""
    grid_t = None if grid is None else tuple(map(tuple, np.asarray(grid)))
    fn = jax.jit(lambda p, i, pv, m: Qwen2_5_VL(cfg).apply(
        {"params": p}, i, pv, None if grid_t is None else np.asarray(grid_t), m))
    return np.asarray(fn(params, jnp.asarray(ids, jnp.int32),
                         None if pixel_values is None else jnp.asarray(pixel_values),
                         None if mask is None else jnp.asarray(mask, jnp.int32)))


def _hf(model, **kw):
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in kw.items() if v is not None}).logits.numpy()


def _hf_images(model, ids, mask, pixels, grid):
    """The reference's logits for prompts with images (its image-token types from the ids)."""
    return _hf(model, input_ids=ids, attention_mask=mask, pixel_values=pixels, image_grid_thw=grid,
               mm_token_type_ids=(ids == IMG).astype(np.int64))


@pytest.fixture(scope="module")
def batch():
    """Two rows, two images of different sizes (odd 10x14 grid, 16x20 grid), left padding."""
    rs = np.random.RandomState(3)
    grid = np.array([[1, 10, 14], [1, 16, 20]])
    ids, mask = left_pad([image_row(rs, 35, 3, 4), image_row(rs, 80, 5, 6)])
    pixels = rs.randn(140 + 320, 1176).astype(np.float32)
    return ids, mask, pixels, grid


@pytest.mark.slow
@pytest.mark.parametrize("grid", [[[1, 10, 14]], [[1, 10, 14], [1, 16, 20], [2, 4, 6]],
                                  [[1, 10, 14]] * 3],
                         ids=["odd_grid", "three_images", "three_equal_images_batched"])
def test_vision_tower(hf_tied, ours_tied, grid):
    model, _ = hf_tied
    cfg, params = ours_tied
    grid = np.array(grid)
    pixels = np.random.RandomState(0).randn(int(grid.prod(1).sum()), 1176).astype(np.float32)
    with torch.no_grad():
        ref = model.model.visual(torch.tensor(pixels), grid_thw=torch.tensor(grid)).pooler_output.numpy()
    ours = jax.jit(lambda p, pv: Qwen2_5_VL(cfg).apply({"params": p}, pv, grid,
                                                       method=Qwen2_5_VL.encode_images))(params, jnp.asarray(pixels))
    assert ours.shape == ref.shape
    assert_parity(np.asarray(ours), ref, "vision tower")


def test_merged_input_embeddings(hf_tied, ours_tied, batch):
    model, _ = hf_tied
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    seen = {}

    def hook(_module, _args, kwargs):
        seen["embeds"] = kwargs["inputs_embeds"].detach().numpy()

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _hf_images(model, ids, mask, pixels, grid)
    finally:
        handle.remove()
    ours = jax.jit(lambda p, i, pv: Qwen2_5_VL(cfg).apply({"params": p}, i, pv, grid,
                                                          method=Qwen2_5_VL.embed_inputs))(
        params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels))
    assert_parity(np.asarray(ours), seen["embeds"], "merged embeddings")


def test_rope_index_matches_reference(hf_tied, batch):
    model, _ = hf_tied
    ids, mask, _, grid = batch
    ref_pos, ref_delta = model.model.get_rope_index(
        torch.tensor(ids), mm_token_type_ids=torch.tensor((ids == IMG).astype(np.int64)),
        image_grid_thw=torch.tensor(grid), attention_mask=torch.tensor(mask))
    pos, delta = jax.jit(functools.partial(get_rope_index, image_token_id=IMG, spatial_merge_size=2))(
        jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32), jnp.asarray(grid, jnp.int32))
    valid = mask.astype(bool)
    np.testing.assert_array_equal(np.asarray(pos)[:, valid], ref_pos.numpy()[:, valid])
    np.testing.assert_array_equal(np.asarray(delta), ref_delta.numpy())


@pytest.mark.slow
def test_logits_two_images_left_padding(hf_tied, ours_tied, batch):
    model, _ = hf_tied
    cfg, params = ours_tied
    ids, mask, pixels, grid = batch
    ref = _hf_images(model, ids, mask, pixels, grid)
    ours = _forward(cfg, params, ids, pixels, grid, mask)
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    valid = mask.astype(bool)   # padded query rows are not defined by either model
    assert_parity(ours[valid], ref[valid], "logits")


@pytest.fixture(scope="module")
def prompt_response():
    """The trainer's layout: left-padded prompts with images, then 7 response tokens padded on the right."""
    rs = np.random.RandomState(4)
    grid = np.array([[1, 4, 6], [1, 6, 8]])
    prompts, _ = left_pad([image_row(rs, 6, 2, 3), image_row(rs, 12, 4, 2)])
    prompt_mask = (prompts != 0).astype(np.int64)
    responses = rs.randint(1, 2000, (2, 7))
    response_mask = np.array([[1] * 7, [1] * 3 + [0] * 4])
    ids = np.concatenate([prompts, responses * response_mask], 1)
    mask = np.concatenate([prompt_mask, response_mask], 1)
    assert mask[:, 0].min() == 0 and mask[:, -1].min() == 0          # holes at both ends
    pixels = rs.randn(24 + 48, 1176).astype(np.float32)
    return ids, mask, pixels, grid


@pytest.mark.slow
def test_logits_padding_on_both_sides(hf_tied, ours_tied, prompt_response):
    model, _ = hf_tied
    cfg, params = ours_tied
    ids, mask, pixels, grid = prompt_response
    ref = _hf_images(model, ids, mask, pixels, grid)
    ours = _forward(cfg, params, ids, pixels, grid, mask)
    valid = mask.astype(bool)
    assert_parity(ours[valid], ref[valid], "logits")


@pytest.mark.slow
@pytest.mark.parametrize("temperature,chunk", [(1.0, 3), (0.7, 64)])
def test_response_log_probs_and_entropy(hf_tied, ours_tied, prompt_response, temperature, chunk):
    """Chunked log p(response token) and entropy equal torch's log_softmax of transformers' logits."""
    model, _ = hf_tied
    cfg, params = ours_tied
    ids, mask, pixels, grid = prompt_response
    r = 7
    ref_logits = _hf_images(model, ids, mask, pixels, grid)
    z = torch.tensor(ref_logits[:, -r - 1:-1]) / temperature
    ref_lp = torch.log_softmax(z, -1).gather(-1, torch.tensor(ids[:, -r:])[..., None])[..., 0].numpy()
    ref_ent = (torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)).numpy()
    fn = jax.jit(lambda p, i, pv, m: Qwen2_5_VL(cfg).apply(
        {"params": p}, i, pv, grid, m, num_targets=r, temperature=temperature, chunk_size=chunk,
        method=Qwen2_5_VL.response_log_probs))
    lp, ent = fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(pixels), jnp.asarray(mask, jnp.int32))
    assert lp.shape == ent.shape == (2, r) and lp.dtype == jnp.float32
    valid = mask[:, -r:].astype(bool)
    assert_parity(np.asarray(lp)[valid], ref_lp[valid], "log-probs")
    assert_parity(np.asarray(ent)[valid], ref_ent[valid], "entropies")


def test_logits_text_only(hf_tied, ours_tied):
    model, _ = hf_tied
    cfg, params = ours_tied
    ids = np.random.RandomState(5).randint(0, 150000, (2, 12))
    ref = _hf(model, input_ids=ids)
    assert_parity(_forward(cfg, params, ids, None, None, None), ref, "logits")


def test_logits_text_only_left_padding(hf_tied, ours_tied):
    model, _ = hf_tied
    cfg, params = ours_tied
    rs = np.random.RandomState(6)
    ids, mask = left_pad([list(rs.randint(0, 150000, 12)), list(rs.randint(0, 150000, 7))])
    # The reference's own position ids for padded text (what its generate() uses).
    pos, _ = model.model.get_rope_index(torch.tensor(ids), mm_token_type_ids=torch.zeros_like(torch.tensor(ids)),
                                        attention_mask=torch.tensor(mask))
    ref = _hf(model, input_ids=ids, attention_mask=mask, position_ids=pos.numpy())
    ours = _forward(cfg, params, ids, None, None, mask)
    valid = mask.astype(bool)
    assert_parity(ours[valid], ref[valid], "logits")
    # And padding never leaks into the valid rows: row 1 alone gives the same logits.
    alone = _forward(cfg, params, ids[1:, -7:], None, None, None)
    np.testing.assert_allclose(ours[1, -7:], alone[0], atol=1e-5, rtol=0)
