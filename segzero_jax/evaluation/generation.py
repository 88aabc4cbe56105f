"""Greedy answers of the policy for a batch of prompts (Seg-Zero's evaluation decoding).

Seg-Zero evaluates with ``generate(max_new_tokens=1024, do_sample=False)`` and decodes with
``skip_special_tokens=True, clean_up_tokenization_spaces=False``. `GreedyGenerator` does the
same through `segzero_jax.rl.sampler` (jitted; built once, so repeated evaluations with new
params reuse its compile)::

    generate = GreedyGenerator(policy_config, tokenizer, max_new_tokens=1024)
    responses = generate(params, batch)      # batch: `policy_inputs.policy_batch(...)`

Each response is (text, number of generated tokens, whether a stop token ended it).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np


class Response(NamedTuple):
    text: str
    num_tokens: int
    stopped: bool


class GreedyGenerator:
    """Greedy decoding of `max_new_tokens` at most, stopping at the tokenizer's end tokens."""

    def __init__(self, policy_config, tokenizer, *, max_new_tokens: int = 1024, mesh=None, rules=None):
        from segzero_jax.rl.sampler import SamplingConfig, make_sampler

        if max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
        self.tokenizer = tokenizer
        sampling = SamplingConfig(group_size=1, max_new_tokens=int(max_new_tokens), greedy=True,
                                  stop_token_ids=tuple(int(i) for i in tokenizer.eos_ids),
                                  pad_id=int(tokenizer.pad_id))
        kwargs = {} if mesh is None else {"mesh": mesh, **({} if rules is None else {"rules": rules})}
        self._sample = make_sampler(policy_config, sampling, **kwargs)
        self.mesh = mesh

    def _place(self, inputs: dict) -> dict:
        """Rows (and their image patches) over the mesh's data axes; the grid stays on the host."""
        if self.mesh is None:
            return inputs
        from segzero_jax.parallel.sharding import named_sharding
        out = dict(inputs)
        for k in ("input_ids", "attention_mask", "pixel_values"):
            out[k] = jax.device_put(inputs[k], named_sharding(("act_batch", None), inputs[k].shape, self.mesh))
        return out

    def __call__(self, params, batch: dict) -> list[Response]:
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
        out = self._sample(params, self._place(inputs), jax.random.PRNGKey(0))
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        stopped = np.asarray(out.stopped)
        n = int(batch.get("num_real", tokens.shape[0]))
        return [Response(self.tokenizer.decode(tokens[i, :int(lengths[i])], skip_special_tokens=True),
                         int(lengths[i]), bool(stopped[i])) for i in range(n)]
