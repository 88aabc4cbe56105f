"""Group sampler on the Qwen2.5-VL KV cache: one prefill per prompt, n samples sharing its keys.

    sc = SamplingConfig(group_size=8, max_new_tokens=256, temperature=1.0)
    sample_fn = make_sampler(policy_config, sc, mesh=mesh)    # jitted once per shape
    out = sample_fn(params, batch, rng)                       # a Rollout

`batch` is the input pipeline's device batch: input_ids int32[B, T] (left-padded prompts),
attention_mask int32[B, T], pixel_values float32[B*P, 1176], image_grid_thw int32[B, 3] (a host
array: the vision layout is planned from it on the host). Rows of the output are prompt-major:
row b*n + j is sample j of prompt b (the layout `grpo.compute_advantages` reshapes to [B, n]).

The rollout (`sample`, a pure function, jittable):
  1. prefill the B prompts (vision tower and LM once per prompt) into a cache of T slots;
  2. draw the first token of each of the n samples from its prompt's last logits;
  3. a `lax.while_loop` of grouped decode steps (`Qwen2_5_VL.decode(..., prompt_cache=...)`):
     each sample's generated keys live in a cache of its own, its prompt's keys in the shared
     prompt cache, read once per group; the loop ends when every row has emitted a stop token
     or the budget M is reached (so a batch that stops early runs fewer steps: `num_steps`).
With `shared_prompt=False` the prompt cache is instead copied into each of the n rows (the
plain decode path; same tokens, n times the prompt's cache traffic).

Token choice per step, on logits z: greedy -> argmax z; otherwise z / temperature, then top-k
(keep the k largest) and top-p (keep the smallest set of largest tokens whose probability
reaches p), then a categorical draw. `log_probs` are log-softmax(z / temperature) at the drawn
tokens (temperature 1 when greedy): the policy's tempered distribution, before truncation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.layers import blocked_argmax, constrain
from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, Qwen2_5_VLConfig, init_cache, unstack_layers
from segzero_jax.models.qwen2_5_vl.cache import Cache, cache_capacity, cache_logical_axes, group_cache, is_axes
from segzero_jax.models.qwen2_5_vl.vision_layout import vision_layout
from segzero_jax.parallel.sharding import DEFAULT_RULES

IM_END, END_OF_TEXT = 151645, 151643
DECODE_LAYOUTS = ("unscanned", "scanned")


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How a rollout draws its tokens.

    group_size      n samples per prompt
    max_new_tokens  M, the response budget (stop token included)
    temperature, top_p, top_k (0: off), greedy (argmax; temperature/top-p/top-k ignored)
    stop_token_ids  a row stops after emitting one of them (kept in the output)
    pad_id          fills a row after its stop token
    decode_layout   "unscanned": decode with one module per layer (the scanned training params
                    are unstacked once per rollout, not per token); "scanned": as the params are
    shared_prompt   the n samples of a prompt read one copy of its keys (False: n copies)
    """

    group_size: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop_token_ids: tuple[int, ...] = (IM_END, END_OF_TEXT)
    pad_id: int = END_OF_TEXT
    decode_layout: str = "unscanned"
    shared_prompt: bool = True

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"SamplingConfig.group_size must be a positive integer, got {self.group_size!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"SamplingConfig.max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature > 0:
            raise ValueError(f"SamplingConfig.temperature must be > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingConfig.top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingConfig.top_k must be a non-negative integer, got {self.top_k!r}")
        if self.decode_layout not in DECODE_LAYOUTS:
            raise ValueError(f"SamplingConfig.decode_layout {self.decode_layout!r} is not one of {DECODE_LAYOUTS}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        if not self.stop_token_ids:
            raise ValueError("SamplingConfig.stop_token_ids must name at least one token")


class Rollout(NamedTuple):
    """A rollout's result; R = B * n rows, prompt-major.

    tokens     int32[R, M]   sampled tokens, `pad_id` after the stop token (which is kept)
    lengths    int32[R]      tokens up to and including the stop token (M if none)
    log_probs  float32[R, M] log-softmax(logits / T) of each drawn token (0 past the length)
    stopped    bool[R]       the row emitted a stop token (False: it ran out of budget)
    num_steps  int32[]       decode steps run after the prefill (at most M - 1)
    """

    tokens: jax.Array
    lengths: jax.Array
    log_probs: jax.Array
    stopped: jax.Array
    num_steps: jax.Array


def filter_logits(z: jax.Array, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """float32[R, V] logits with the tokens outside the top-k / top-p set at -inf."""
    if top_k and top_k < z.shape[-1]:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if top_p < 1.0:
        sorted_z = -jnp.sort(-z, axis=-1)
        probs = jax.nn.softmax(sorted_z, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs        # mass of the strictly larger tokens
        kept = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1: the largest always stays
        cutoff = jnp.take_along_axis(sorted_z, kept - 1, axis=-1)
        z = jnp.where(z < cutoff, -jnp.inf, z)
    return z


def choose_tokens(logits: jax.Array, key: jax.Array, sc: SamplingConfig) -> tuple[jax.Array, jax.Array]:
    """float32[R, V] logits -> (int32[R] tokens, float32[R] their log-softmax(logits / T))."""
    logits = logits.astype(jnp.float32)
    if sc.greedy:
        tokens = blocked_argmax(logits)
        z = logits
    else:
        z = logits / sc.temperature
        # Gumbel-max, as jax.random.categorical draws (same key, same tokens), with the
        # two-pass argmax: XLA's CPU argmax over a vocabulary-sized axis is a slow scalar loop.
        noisy = filter_logits(z, sc.top_k, sc.top_p) + jax.random.gumbel(key, z.shape, jnp.float32)
        tokens = blocked_argmax(noisy)
    logp = jnp.take_along_axis(z, tokens[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(z, axis=-1)
    return tokens, logp


def _constrain_cache(config: Qwen2_5_VLConfig, cache: Cache) -> Cache:
    axes = cache_logical_axes(config)
    return jax.tree.map(lambda ax, a: constrain(a, ax), axes, cache, is_leaf=is_axes)


def _copied_prompt_cache(config: Qwen2_5_VLConfig, prompt: Cache, n: int, max_new_tokens: int) -> Cache:
    """The prompt cache repeated into n rows per prompt, with room for the new tokens."""
    t = prompt["lengths"].shape[0]
    per_layer = not config.scan_layers
    cache = init_cache(config, t * n, cache_capacity(prompt) + max_new_tokens, dtype=_kv_dtype(prompt))
    axis = 0 if per_layer else 1

    def fill(dst, src):
        rep = jnp.repeat(src, n, axis=axis)
        return jax.lax.dynamic_update_slice(dst, rep, (0,) * dst.ndim)

    for name in ("k", "v"):
        cache[name] = (tuple(fill(d, s) for d, s in zip(cache[name], prompt[name])) if per_layer
                       else fill(cache[name], prompt[name]))
    cache["lengths"] = jnp.repeat(prompt["lengths"], n)
    cache["rope_deltas"] = jnp.repeat(prompt["rope_deltas"], n)
    return cache


def _kv_dtype(cache: Cache):
    k = cache["k"]
    return (k[0] if isinstance(k, (tuple, list)) else k).dtype


def decoding_params(config: Qwen2_5_VLConfig, params: dict, sc: SamplingConfig) -> tuple[Qwen2_5_VLConfig, dict]:
    """The config and params the rollout decodes with (unstacked once when `decode_layout` asks)."""
    if sc.decode_layout == "unscanned" and config.scan_layers:
        return config.replace(scan_layers=False), unstack_layers(params)
    if sc.decode_layout == "scanned" and not config.scan_layers:
        from segzero_jax.models.qwen2_5_vl import stack_layers
        return config.replace(scan_layers=True), stack_layers(params)
    return config, params


def sample(config: Qwen2_5_VLConfig, params: dict, batch: dict[str, Any], rng: jax.Array,
           sc: SamplingConfig, layout: Optional[dict] = None) -> Rollout:
    """The rollout as a pure function (see the module docstring); jit it, or use `make_sampler`.

    `batch["image_grid_thw"]` may be traced when `layout` (the host `vision_layout` of the
    grids) is given; `pixel_values` may be absent for text-only prompts.
    """
    config, params = decoding_params(config, params, sc)
    model = Qwen2_5_VL(config)
    ids = jnp.asarray(batch["input_ids"], jnp.int32)
    mask = jnp.asarray(batch.get("attention_mask", jnp.ones_like(ids)), jnp.int32)
    pixels = batch.get("pixel_values")
    grid = batch.get("image_grid_thw") if pixels is not None else None
    b, t = ids.shape
    n, m = sc.group_size, sc.max_new_tokens
    rows = b * n

    prompt_cache = _constrain_cache(config, init_cache(config, b, t))
    logits, prompt_cache = model.apply({"params": params}, ids, prompt_cache, pixels, grid, mask,
                                       vision_layout=layout, method=Qwen2_5_VL.prefill)
    if sc.shared_prompt:
        cache = group_cache(config, prompt_cache, n, max(m - 1, 1), dtype=_kv_dtype(prompt_cache))
        shared = prompt_cache
    else:
        cache = _copied_prompt_cache(config, prompt_cache, n, max(m - 1, 1))
        shared = None
    cache = _constrain_cache(config, cache)
    stops = jnp.asarray(sc.stop_token_ids, jnp.int32)
    is_stop = lambda tok: jnp.any(tok[:, None] == stops[None, :], axis=-1)  # noqa: E731

    first, first_logp = choose_tokens(jnp.repeat(logits, n, axis=0), jax.random.fold_in(rng, 0), sc)
    tokens = jnp.full((rows, m), sc.pad_id, jnp.int32).at[:, 0].set(first)
    log_probs = jnp.zeros((rows, m), jnp.float32).at[:, 0].set(first_logp)
    done = is_stop(first)

    def cond(state):
        step, _, _, done, _ = state
        return (step < m) & ~jnp.all(done)

    def body(state):
        step, tokens, log_probs, done, cache = state
        prev = jax.lax.dynamic_index_in_dim(tokens, step - 1, axis=1, keepdims=False)
        logits, cache = model.apply({"params": params}, prev, cache, shared, method=Qwen2_5_VL.decode)
        new, logp = choose_tokens(logits, jax.random.fold_in(rng, step), sc)
        new = jnp.where(done, sc.pad_id, new)
        logp = jnp.where(done, 0.0, logp)
        tokens = jax.lax.dynamic_update_index_in_dim(tokens, new, step, axis=1)
        log_probs = jax.lax.dynamic_update_index_in_dim(log_probs, logp, step, axis=1)
        return step + 1, tokens, log_probs, done | is_stop(new), _constrain_cache(config, cache)

    step, tokens, log_probs, done, _ = jax.lax.while_loop(
        cond, body, (jnp.ones((), jnp.int32), tokens, log_probs, done, cache))
    stop_at = jnp.argmax(jnp.isin(tokens, stops), axis=1).astype(jnp.int32)
    lengths = jnp.where(done, stop_at + 1, m).astype(jnp.int32)
    return Rollout(tokens, lengths, log_probs, done, step - 1)


@functools.lru_cache(maxsize=16)
def _host_layout(grid_bytes: bytes, shape: tuple[int, ...], vision_config) -> dict:
    grid = np.frombuffer(grid_bytes, np.int64).reshape(shape)
    return vision_layout(grid, vision_config)


def host_vision_layout(grid: Any, vision_config) -> dict:
    """`vision_layout` of a host grid int[I, 3], memoised (a training run's grids repeat)."""
    g = np.asarray(grid, np.int64)
    return _host_layout(g.tobytes(), g.shape, vision_config)


def make_sampler(config: Qwen2_5_VLConfig, sc: SamplingConfig, mesh: Optional[jax.sharding.Mesh] = None,
                 rules=DEFAULT_RULES):
    """A jitted `(params, batch, rng) -> Rollout`.

    The vision layout is planned on the host from `batch["image_grid_thw"]`; with a `mesh`, the
    rollout is traced under it and the logical-axis `rules` (params by their axes, rows over the
    data axes, as the arrays passed in are placed).
    """
    jitted = jax.jit(functools.partial(sample, config, sc=sc))

    def run(params: dict, batch: dict[str, Any], rng: jax.Array) -> Rollout:
        arrays = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
                  if k in batch and batch[k] is not None}
        layout = None
        if "pixel_values" in arrays:
            layout = host_vision_layout(arrays["image_grid_thw"], config.vision)
            arrays["image_grid_thw"] = np.asarray(arrays["image_grid_thw"], np.int32)
        if mesh is None:
            return jitted(params, arrays, rng, layout=layout)
        with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
            return jitted(params, arrays, rng, layout=layout)

    return run
