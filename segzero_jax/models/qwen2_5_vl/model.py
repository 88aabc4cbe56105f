"""Qwen2.5-VL for conditional generation: vision tower + merged embeddings + decoder + KV cache.

Inputs follow transformers' `Qwen2_5_VLForConditionalGeneration`:
  input_ids int32[B, T], pixel_values float32[L, 1176] (patches of all images concatenated),
  image_grid_thw int32[I, 3], attention_mask int32[B, T]  ->  logits float32[B, T, V].

Static shapes under jit. The vision tower needs the grids on the host: either pass
`image_grid_thw` as a host value (numpy/tuple; close over it or make it static) or pass
`vision_layout=vision_layout(grid, config.vision)` as (traced) arrays. 3-D positions are
computed inside jit from input_ids/attention_mask/image_grid_thw (rope.get_rope_index,
`image_grid_thw` may be traced there), or taken precomputed as `position_ids` int32[3, B, T].

Padding: `attention_mask` may pad anywhere (left-padded prompts, a prompt + response with
padding on both sides). Inside, each row's valid tokens are packed to the front, attention runs
in the causal + kv_lengths form (cuDNN on GPU, XLA elsewhere, never a dense mask), and outputs
are put back in the input's order. `right_padded=True` declares that no packing is needed.
Vision attention always uses per-segment lengths.

KV cache (pure pytree, `init_cache`): prefill writes the packed prompt's rotated k/v, layer by
layer, at the front of each cache row, with the row's length and M-RoPE offset (the next
rotary position is `lengths + rope_deltas`); `decode` appends one token per row at that row's
length. The cache rides in the layer scan's carry (or, unscanned, each layer holds its own
buffer), so a donated cache is updated in place.

Layer layouts (`config.scan_layers`): the scanned stack keeps decoder params under
`language_model/decoder/layers/layer` with a leading layer axis; the unscanned one under
`language_model/decoder/layers_{i}`. `unstack_layers` / `stack_layers` convert a param tree
between them (numpy leaves are sliced as views, no copy).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segzero_jax.models.qwen2_5_vl.cache import Cache, cache_capacity
from segzero_jax.models.qwen2_5_vl.config import Qwen2_5_VLConfig
from segzero_jax.models.qwen2_5_vl.language import SCANNED_STACK, LanguageModel, layer_name, layer_number
from segzero_jax.models.qwen2_5_vl.rope import get_rope_index, mrope_cos_sin
from segzero_jax.models.qwen2_5_vl.vision import VisionTower, layout_arrays
from segzero_jax.models.qwen2_5_vl.vision_layout import vision_layout as host_vision_layout


def dummy_inputs(config: Qwen2_5_VLConfig) -> dict[str, Any]:
    """Smallest inputs that touch every param (one 2x2-patch image), for init/eval_shape."""
    v = config.vision
    m = v.spatial_merge_size
    ids = np.array([[config.vision_start_token_id, config.image_token_id, config.vision_end_token_id, 0]],
                   np.int32)
    return {"input_ids": jnp.asarray(ids), "pixel_values": jnp.zeros((m * m, v.patch_dim), jnp.float32),
            "image_grid_thw": np.array([[1, m, m]], np.int32)}


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


class Qwen2_5_VL(nn.Module):
    """The policy model. `apply({"params": p}, input_ids, ...)` -> float32 logits `[B, T, V]`."""

    config: Qwen2_5_VLConfig

    def setup(self):
        self.visual = VisionTower(self.config, name="visual")
        self.language_model = LanguageModel(self.config, name="language_model")

    # -- embeddings -----------------------------------------------------------------------
    def encode_images(self, pixel_values, image_grid_thw=None, vision_layout=None):
        """float32[L, 1176] -> image features `[L/4, D_lm]` in prompt order."""
        if vision_layout is None:
            if image_grid_thw is None:
                raise ValueError("pixel_values needs image_grid_thw (or a precomputed vision_layout)")
            vision_layout = host_vision_layout(image_grid_thw, self.config.vision)
        return self.visual(pixel_values, layout_arrays(vision_layout))

    def embed_inputs(self, input_ids, pixel_values=None, image_grid_thw=None, vision_layout=None,
                     image_features=None):
        """Token embeddings with image features scattered into `<|image_pad|>` slots: `[B, T, D]`.

        Features are taken in batch-major order of the image tokens (transformers'
        masked_scatter). A count mismatch is an error when the inputs are concrete.
        `image_features` `[L/4, D_lm]` (the output of `encode_images`) replaces the vision
        tower's pass over `pixel_values`: rows that share an image share one vision forward.
        """
        x = self.language_model.embed(input_ids)
        if pixel_values is None and image_features is None:
            return x
        feats = (self.encode_images(pixel_values, image_grid_thw, vision_layout) if image_features is None
                 else image_features).astype(x.dtype)
        is_img = input_ids == self.config.image_token_id
        if not _is_tracer(input_ids) and not _is_tracer(feats):
            n_tok = int(np.asarray(is_img).sum())
            if n_tok != feats.shape[0]:
                raise ValueError(f"input_ids hold {n_tok} image tokens (id {self.config.image_token_id}) "
                                 f"but the images give {feats.shape[0]} features")
        ordinal = jnp.clip(jnp.cumsum(is_img.reshape(-1)) - 1, 0, feats.shape[0] - 1).reshape(is_img.shape)
        return jnp.where(is_img[..., None], feats[ordinal], x)

    def rope_positions(self, input_ids, attention_mask=None, image_grid_thw=None):
        """(position_ids int32[3, B, T], rope_deltas int32[B, 1]); see rope.get_rope_index."""
        grid = None if image_grid_thw is None else jnp.asarray(image_grid_thw, jnp.int32)
        return get_rope_index(input_ids, attention_mask, grid, image_token_id=self.config.image_token_id,
                              spatial_merge_size=self.config.vision.spatial_merge_size)

    def _cos_sin(self, position_ids):
        t = self.config.text
        return mrope_cos_sin(position_ids, t.head_dim, t.rope_theta, t.mrope_section)

    # -- full forward ---------------------------------------------------------------------
    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                 position_ids=None, vision_layout=None, right_padded: bool = False):
        """float32 logits `[B, T, V]` (garbage at padded positions).

        `right_padded=True` declares that attention_mask only pads on the right, which skips
        packing the rows (a gather of ids and one of hidden states).
        """
        hidden = self.hidden_states(input_ids, pixel_values, image_grid_thw, attention_mask,
                                    position_ids, vision_layout, right_padded)
        return self.language_model.logits(hidden)

    def hidden_states(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                      position_ids=None, vision_layout=None, right_padded: bool = False):
        """Decoder output before the final norm, `[B, T, D]`, in the input's order."""
        out = self._prompt_pass(input_ids, pixel_values, image_grid_thw, attention_mask,
                                position_ids, vision_layout, right_padded)
        return self._unpack(out[0], out[4])

    def response_log_probs(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None,
                           position_ids=None, vision_layout=None, right_padded: bool = False, *,
                           num_targets: int, temperature: float = 1.0, chunk_size: int = 256,
                           image_features=None):
        """Log-probabilities and entropies of the last `num_targets` tokens, float32[B, R] each.

        The GRPO layout: `input_ids` = prompt (left-padded) + response (R tokens, right-padded);
        position t of the response is scored by the logits at the token before it, divided
        by `temperature`. Logits are made `chunk_size` positions at a time (see
        `LanguageModel.token_log_probs`), so no float32 `[B, T, V]` array is ever held.
        Values at padded response positions are garbage; mask them. `image_features`: see
        `embed_inputs` (with it, `pixel_values` is not read; `image_grid_thw` still places the
        image tokens' 3-D positions).
        """
        t = input_ids.shape[1]
        if not 0 < num_targets < t:
            raise ValueError(f"num_targets={num_targets} must be in [1, {t - 1}] for sequences of {t} tokens")
        out = self._prompt_pass(input_ids, pixel_values, image_grid_thw, attention_mask, position_ids,
                                vision_layout, right_padded, image_features=image_features)
        hidden, dest = out[0], out[4]
        window = slice(t - num_targets - 1, t - 1)
        # Only the scoring positions come back from the packed order (not all T).
        hidden = hidden[:, window] if dest is None else self._unpack(hidden, dest[:, window])
        targets = jnp.asarray(input_ids, jnp.int32)[:, t - num_targets:]
        return self.language_model.token_log_probs(hidden, targets, temperature, chunk_size)

    def _prompt_pass(self, input_ids, pixel_values, image_grid_thw, attention_mask, position_ids,
                     vision_layout, right_padded, cache_kv=None, image_features=None):
        """Decoder over a (packed) prompt.

        Returns (hidden `[B, T, D]` in packed order, stacked k/v `[L, B, T, K, H]` in packed
        order — or, given `cache_kv` (k, v) `[L, B, S, K, H]`, those with the prompt written
        into slots `[0, T)` — position_ids int32[3, B, T], rope_deltas int32[B, 1] or None,
        dest int32[B, T] mapping input slots to packed slots (None when nothing was packed),
        lengths int32[B] of valid tokens (None without an attention_mask)).
        """
        input_ids = jnp.asarray(input_ids, jnp.int32)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be int32[B, T], got shape {input_ids.shape}")
        if position_ids is None:
            if (pixel_values is not None or image_features is not None) and image_grid_thw is None:
                raise ValueError("image_grid_thw is needed for the 3-D rotary positions of the image tokens "
                                 "(pass it with vision_layout; it may be a traced array), or pass position_ids")
            position_ids, rope_deltas = self.rope_positions(input_ids, attention_mask, image_grid_thw)
        else:
            rope_deltas = None
        if position_ids.shape != (3,) + input_ids.shape:
            raise ValueError(f"position_ids must be int32[3, B, T] = {(3,) + input_ids.shape}, "
                             f"got {position_ids.shape}")
        dest, lengths, packed_ids, packed_pos = None, None, input_ids, position_ids
        if attention_mask is not None:
            valid = jnp.asarray(attention_mask) > 0
            lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
            if not right_padded:
                dest = packing_destinations(valid)
                order = inverse_permutation(dest)
                packed_ids = jnp.take_along_axis(input_ids, order, axis=1)
                packed_pos = jnp.take_along_axis(position_ids, order[None], axis=2)
        # Image features follow the image tokens in batch-major order, which packing keeps.
        x = self.embed_inputs(packed_ids, pixel_values, image_grid_thw, vision_layout, image_features)
        cos, sin = self._cos_sin(packed_pos)
        # A row with no valid token attends to its first slot: finite garbage, never NaN.
        kv_lengths = None if lengths is None else jnp.maximum(lengths, 1)
        x, kv = self.language_model(x, cos, sin, kv_lengths=kv_lengths, is_causal=True, cache=cache_kv)
        return x, kv, position_ids, rope_deltas, dest, lengths

    @staticmethod
    def _unpack(x, dest):
        return x if dest is None else jnp.take_along_axis(x, dest[..., None], axis=1)

    # -- KV cache -------------------------------------------------------------------------
    def prefill(self, input_ids, cache: Cache, pixel_values=None, image_grid_thw=None,
                attention_mask=None, position_ids=None, rope_deltas=None, vision_layout=None,
                all_logits: bool = False):
        """Runs the prompt `[B, T]` (T <= cache capacity) and fills the cache.

        Returns (logits float32[B, V] of each row's last valid token, or `[B, T, V]` in the
        input's order with all_logits, cache). With precomputed `position_ids`, pass their
        `rope_deltas` int32[B, 1] too.
        """
        b, t = input_ids.shape
        _check_cache_layout(self.config, cache)
        if t > cache_capacity(cache):
            raise ValueError(f"prompt length {t} exceeds the cache capacity {cache_capacity(cache)}")
        if position_ids is not None and rope_deltas is None:
            raise ValueError("prefill with precomputed position_ids also needs rope_deltas")
        x, (k, v), position_ids, deltas, dest, lengths = self._prompt_pass(
            input_ids, pixel_values, image_grid_thw, attention_mask, position_ids, vision_layout, False,
            cache_kv=(cache["k"], cache["v"]))
        deltas = deltas if rope_deltas is None else jnp.asarray(rope_deltas, jnp.int32)
        lengths = jnp.full((b,), t, jnp.int32) if lengths is None else lengths
        new = {"k": k, "v": v, "lengths": lengths,
               "rope_deltas": deltas[:, 0].astype(jnp.int32)}
        if all_logits:
            return self.language_model.logits(self._unpack(x, dest)), new
        last = jnp.take_along_axis(x, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
        return self.language_model.logits(last)[:, 0], new

    def decode(self, token_ids, cache: Cache, prompt_cache: Optional[Cache] = None):
        """One token per row, int32[B] -> (logits float32[B, V], cache advanced by one).

        Grouped decoding (`prompt_cache` given): the B*n rows of `cache` (prompt-major, from
        `cache.group_cache`) hold only their generated tokens, and row b*n + j also attends to
        prompt b's keys in `prompt_cache` (a prefilled cache of B rows, read once per group,
        never copied n times); the result equals decoding a cache holding the prompt copied
        into each of the n rows.
        """
        _check_cache_layout(self.config, cache)
        prefix = None
        if prompt_cache is not None:
            _check_cache_layout(self.config, prompt_cache)
            prefix = (prompt_cache["k"], prompt_cache["v"], prompt_cache["lengths"])
        ids = jnp.asarray(token_ids, jnp.int32).reshape(-1, 1)
        x = self.language_model.embed(ids)
        position = cache["lengths"] + cache["rope_deltas"]
        pos = jnp.broadcast_to(position[None, :, None], (3, ids.shape[0], 1))
        cos, sin = self._cos_sin(pos)
        capacity = cache_capacity(cache)
        lengths = cache["lengths"]
        x, (k, v) = self.language_model(x, cos, sin, kv_lengths=jnp.minimum(lengths + 1, capacity),
                                        is_causal=False, cache=(cache["k"], cache["v"]),
                                        cache_index=lengths, prefix=prefix)
        new = {"k": k, "v": v, "lengths": jnp.minimum(lengths + 1, capacity),
               "rope_deltas": cache["rope_deltas"]}
        return self.language_model.logits(x)[:, 0], new


def _check_cache_layout(config: Qwen2_5_VLConfig, cache: Cache) -> None:
    per_layer = isinstance(cache["k"], (tuple, list))
    if per_layer == config.scan_layers:
        have, want = ("per-layer buffers", "one stacked array") if per_layer else \
            ("one stacked array", "per-layer buffers")
        raise ValueError(f"the cache holds {have} but config.scan_layers={config.scan_layers} needs {want}: "
                         "make it with init_cache(config, ...)")


def packing_destinations(valid: jax.Array) -> jax.Array:
    """bool[B, T] -> int32[B, T]: the slot each token takes when a row's valid tokens move to
    the front in order and its padding follows (a permutation of 0..T-1 per row)."""
    v = valid.astype(jnp.int32)
    n_valid = jnp.sum(v, axis=1, keepdims=True)
    return jnp.where(valid, jnp.cumsum(v, axis=1) - 1, n_valid + jnp.cumsum(1 - v, axis=1) - 1)


def inverse_permutation(perm: jax.Array) -> jax.Array:
    """int32[B, T] row-wise permutations -> their inverses."""
    b, t = perm.shape
    rows = jnp.arange(b)[:, None]
    return jnp.zeros_like(perm).at[rows, perm].set(jnp.broadcast_to(jnp.arange(t, dtype=perm.dtype), (b, t)))


def init_params(config: Qwen2_5_VLConfig, rng: jax.Array) -> dict:
    """Random params (boxed with logical axes; unbox with `nn.unbox`), initialised under jit."""
    return jax.jit(lambda r: Qwen2_5_VL(config).init(r, **dummy_inputs(config))["params"])(rng)


def abstract_params(config: Qwen2_5_VLConfig) -> dict:
    """ShapeDtypeStructs of the (unboxed) param tree."""
    return nn.unbox(jax.eval_shape(lambda r: init_params(config, r), jax.random.key(0)))


_DECODER = ("language_model", "decoder")


def _decoder(params: dict) -> dict:
    try:
        return params[_DECODER[0]][_DECODER[1]]
    except (KeyError, TypeError):
        raise ValueError("not a Qwen2.5-VL param tree: no language_model/decoder") from None


def _with_decoder(params: dict, decoder: dict) -> dict:
    lm = dict(params[_DECODER[0]], **{_DECODER[1]: decoder})
    return dict(params, **{_DECODER[0]: lm})


def unstack_layers(params: dict) -> dict:
    """Scanned params (`config.scan_layers=True`) -> the unscanned layout: the decoder's stacked
    `layers/layer` leaves `[L, ...]` become `layers_0 ... layers_{L-1}`. Numpy leaves become
    views; jax arrays are sliced on device (one copy of the decoder). Other params are shared."""
    dec = _decoder(params)
    if SCANNED_STACK not in dec:
        raise ValueError(f"params are not in the scanned layout (no language_model/decoder/{SCANNED_STACK})")
    stacked = dec[SCANNED_STACK]["layer"]
    n = jax.tree.leaves(stacked)[0].shape[0]
    new = {k: v for k, v in dec.items() if k != SCANNED_STACK}
    for i in range(n):
        new[layer_name(i)] = jax.tree.map(lambda a, i=i: a[i], stacked)
    return _with_decoder(params, new)


def stack_layers(params: dict) -> dict:
    """The inverse of `unstack_layers`: `layers_{i}` leaves stacked into `layers/layer` `[L, ...]`
    (numpy leaves with np.stack, jax arrays with jnp.stack)."""
    dec = _decoder(params)
    numbers = {k: layer_number(k) for k in dec if layer_number(k) is not None}
    if not numbers or sorted(numbers.values()) != list(range(len(numbers))):
        raise ValueError(f"params are not in the unscanned layout (decoder holds {sorted(dec)})")

    def stack(*leaves):
        return np.stack(leaves) if all(isinstance(a, np.ndarray) for a in leaves) else jnp.stack(leaves)

    new = {k: v for k, v in dec.items() if k not in numbers}
    new[SCANNED_STACK] = {"layer": jax.tree.map(stack, *(dec[layer_name(i)] for i in range(len(numbers))))}
    return _with_decoder(params, new)
