"""Throughput and peak memory of the Qwen2.5-VL policy, against transformers on the same config.

  python -m experiments.perf.benchmark_qwen --preset=tiny --batch=4 --seq=256 [--image_px=224]
  python -m experiments.perf.benchmark_qwen --mode=train --preset=tiny --batch=2 --seq=256 --new_tokens=64
  python -m experiments.perf.benchmark_qwen --mode=decode --preset=tiny --batch=16 --seq=1024

`--mode=forward` times the jitted forward (logits for `batch x seq` tokens, optionally with one
image per row whose placeholder tokens are part of `seq`), then the same forward of
`Qwen2_5_VLForConditionalGeneration` with the same weights (exported through `export_hf`,
which also gives a logits check). `--mode=train` times the GRPO update's work: forward +
backward of the mean log-probability of the last `new_tokens` tokens (ours:
`response_log_probs`, logits a chunk at a time; transformers: log_softmax of its logits over
those positions, as in the peer baseline), with `--remat` (ours: the named policy; transformers:
gradient checkpointing unless "none"); the check compares the two losses. `--mode=decode`
times one-token greedy decode steps after a `seq`-token prefill (ours: `Qwen2_5_VL.decode` on
the donated KV cache; transformers: its forward with its KV cache); tokens/s counts the
rows' new tokens and the check compares the first step's logits. Peak memory: on accelerators the allocator's peak
(`memory_stats` / `torch.cuda.max_memory_allocated`); on CPU the peak resident-set growth
sampled over the warm-up and timed calls, starting with params and inputs resident (and,
for JAX, the executable compiled) - the same method for both - plus XLA's buffer sizes. TFLOP/s:
the matmul FLOPs of our call (`segzero_jax.flops`, counted on the XLA attention path; decode
attends over the whole cache capacity) over each side's time - one numerator for both, so the
figures compare like tokens/s and give the utilisation against the card's peak (transformers'
train mode does more work than that: logits at every position). Prints a table and one JSON line.
`--profile_dir=DIR` also traces two of our calls (decode: two more steps) and keeps their HLO for
`python -m experiments.perf.profile_summary --trace=DIR`.
"""

from __future__ import annotations

import tempfile
import time

from absl import app, flags

from experiments.perf.peak_memory import RssPeak
from experiments.perf.profiling import PROFILE_DIR, profile
from experiments.perf.report import emit

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "tiny", "config preset (tiny, 3b, 7b)")
flags.DEFINE_integer("batch", 4, "rows per forward")
flags.DEFINE_integer("seq", 256, "tokens per row (image placeholders included)")
flags.DEFINE_integer("image_px", 0, "side of one square image per row (multiple of 28); 0 = text only")
flags.DEFINE_string("dtype", "float32", "compute and param dtype")
flags.DEFINE_string("attention_impl", "auto", "auto | xla | cudnn")
flags.DEFINE_integer("warmup", 2, "untimed calls after compilation")
flags.DEFINE_integer("iters", 5, "timed calls")
flags.DEFINE_bool("compare_hf", True, "also run transformers on the same config and weights")
flags.DEFINE_enum("mode", "forward", ["forward", "train", "decode"],
                  "forward logits, forward + backward of log-probs, or cached decode steps")
flags.DEFINE_integer("new_tokens", 256, "train mode: response tokens scored at the end of each row")
flags.DEFINE_string("remat", "none", "train mode: remat policy (none, full, dots, dots_no_batch, everything)")
flags.DEFINE_integer("chunk_size", 256, "train mode: positions per logits chunk (ours)")
flags.DEFINE_bool("scan_layers", True, "decoder layers under one scan (params stacked); --noscan_layers: one "
                  "module and one KV-cache buffer per layer, the decoding layout")


def make_inputs(cfg, batch, seq, image_px, rng):
    import numpy as np
    v = cfg.vision
    ids = rng.randint(0, 150000, (batch, seq)).astype(np.int32)
    if not image_px:
        return ids, None, None
    unit = v.patch_size * v.spatial_merge_size
    if image_px % unit:
        raise ValueError(f"--image_px={image_px} must be a multiple of {unit}")
    side = image_px // v.patch_size
    n_tok = (side // v.spatial_merge_size) ** 2
    if n_tok + 3 > seq:
        raise ValueError(f"--seq={seq} is too short for {n_tok} image tokens")
    ids[:, 1] = cfg.vision_start_token_id
    ids[:, 2:2 + n_tok] = cfg.image_token_id
    ids[:, 2 + n_tok] = cfg.vision_end_token_id
    grid = np.array([[1, side, side]] * batch, np.int32)
    pixels = rng.randn(batch * side * side, v.patch_dim).astype(np.float32)
    return ids, pixels, grid


def _jax_result(compiled, seconds: float, compile_s: float, rss: "RssPeak", flops: int) -> dict:
    """Timing + memory of one of our compiled calls: the allocator's peak on accelerators, the
    resident-set growth on CPU, and XLA's buffer sizes; `flops` is the call's matmul work."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    mem = compiled.memory_analysis()
    return {"s_per_call": seconds, "compile_s": compile_s, "flops": flops,
            "peak_bytes": int(stats.get("peak_bytes_in_use") or rss.growth),
            "xla_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0) or 0),
            "xla_argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0) or 0)}


def _jax_objective(model, mode):
    """The jitted work: (params, ids, pixels, layout) -> logits (forward) or (loss, grads) (train)."""
    import jax
    import jax.numpy as jnp
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL

    if mode == "forward":
        return lambda p, i, pv, g, lay: model.apply({"params": p}, i, pv, g, vision_layout=lay)

    def loss(p, i, pv, g, lay):
        lp, _ = model.apply({"params": p}, i, pv, g, vision_layout=lay, num_targets=FLAGS.new_tokens,
                            chunk_size=FLAGS.chunk_size, method=Qwen2_5_VL.response_log_probs)
        return jnp.mean(lp)

    return jax.value_and_grad(loss)


def bench_ours(cfg, params, ids, pixels, grid):
    import jax
    import jax.numpy as jnp
    from segzero_jax.flops import count_flops
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, vision_layout
    model = Qwen2_5_VL(cfg)
    layout = None if grid is None else vision_layout(grid, cfg.vision)
    gridj = None if grid is None else jnp.asarray(grid)
    work = _jax_objective(model, FLAGS.mode)
    fn = lambda p, i, pv, lay: work(p, i, pv, gridj, lay)
    args = (params, jnp.asarray(ids), None if pixels is None else jnp.asarray(pixels), layout)
    work_xla = _jax_objective(Qwen2_5_VL(cfg.replace(attention_impl="xla")), FLAGS.mode)
    flops = count_flops(lambda p, i, pv, lay: work_xla(p, i, pv, gridj, lay), *args)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    with RssPeak() as rss:
        for _ in range(FLAGS.warmup):
            jax.block_until_ready(compiled(*args))
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
            out = compiled(*args)
        jax.block_until_ready(out)
        dt = (time.perf_counter() - t0) / FLAGS.iters
    check = out if FLAGS.mode == "forward" else out[0]
    profile(lambda: compiled(*args), compiled, f"qwen_{FLAGS.mode}")   # with --profile_dir
    return _jax_result(compiled, dt, compile_s, rss, flops), check


def bench_ours_decode(cfg, params, ids, pixels, grid):
    import jax
    import jax.numpy as jnp
    from segzero_jax.flops import count_flops
    from segzero_jax.models.layers import blocked_argmax
    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, init_cache, vision_layout
    model = Qwen2_5_VL(cfg)
    b, t = ids.shape
    capacity = t + FLAGS.warmup + FLAGS.iters + 1 + (2 if PROFILE_DIR.value else 0)
    layout = None if grid is None else vision_layout(grid, cfg.vision)
    gridj = None if grid is None else jnp.asarray(grid)

    @jax.jit
    def prefill(p, i, pv, lay):
        logits, cache = model.apply({"params": p}, i, init_cache(cfg, b, capacity), pv, gridj,
                                    vision_layout=lay, method=Qwen2_5_VL.prefill)
        return blocked_argmax(logits), cache

    def make_step(model):
        def step(p, tok, cache):
            logits, cache = model.apply({"params": p}, tok, cache, method=Qwen2_5_VL.decode)
            return blocked_argmax(logits), logits, cache
        return step

    step = make_step(model)

    tok, cache = prefill(params, jnp.asarray(ids), None if pixels is None else jnp.asarray(pixels), layout)
    t0 = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(2,)).lower(params, tok, cache).compile()
    compile_s = time.perf_counter() - t0
    flops = count_flops(make_step(Qwen2_5_VL(cfg.replace(attention_impl="xla"))), params, tok, cache)
    tok, first_logits, cache = compiled(params, tok, cache)
    first_logits = jax.device_get(first_logits)
    with RssPeak() as rss:
        for _ in range(FLAGS.warmup):
            tok, _, cache = compiled(params, tok, cache)
        jax.block_until_ready(cache)
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
            tok, _, cache = compiled(params, tok, cache)
        jax.block_until_ready(cache)
        dt = (time.perf_counter() - t0) / FLAGS.iters
    state = [tok, cache]

    def one_step():   # the cache is donated: each traced step continues from the last
        state[0], _, state[1] = compiled(params, *state)
        return state[1]

    profile(one_step, compiled, "qwen_decode")   # with --profile_dir
    return _jax_result(compiled, dt, compile_s, rss, flops), first_logits


def bench_hf(cfg, params, ids, pixels, grid):
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from segzero_jax.models.qwen2_5_vl import export_hf
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(cfg, params, tmp)
        tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.param_dtype]
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, dtype=tdtype).eval()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    model.to(dev)
    kw = {"input_ids": torch.tensor(ids, dtype=torch.long, device=dev)}
    if pixels is not None:
        kw.update(pixel_values=torch.tensor(pixels, device=dev), image_grid_thw=torch.tensor(grid, device=dev),
                  mm_token_type_ids=(kw["input_ids"] == cfg.image_token_id).long())
    r = FLAGS.new_tokens
    if FLAGS.mode == "decode":
        return _hf_decode(model, kw, cuda)

    def call():
        if FLAGS.mode == "forward":
            with torch.no_grad():
                return model(**kw).logits
        out = model(**kw)
        loss = torch.log_softmax(out.logits[:, -r - 1:-1].float(), -1).gather(
            -1, kw["input_ids"][:, -r:, None]).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)
        return loss.detach()

    if FLAGS.mode == "train":
        model.train()
        if FLAGS.remat != "none":
            model.gradient_checkpointing_enable()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as rss:
        for _ in range(FLAGS.warmup):
            call()
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(FLAGS.iters):
            out = call()
        if cuda:
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / FLAGS.iters
    peak = torch.cuda.max_memory_allocated() if cuda else rss.growth
    return {"s_per_call": dt, "peak_bytes": int(peak)}, out.float().cpu().numpy()


def _hf_decode(model, kw, cuda):
    import inspect

    import torch
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    # transformers renamed `past_key_values` to `cache` (argument and output field) in 5.2x
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def step(tok, cache):
        out = model(input_ids=tok[:, None], use_cache=True, **{name: cache})
        return out, getattr(out, name), out.logits[:, -1].argmax(-1)

    with torch.no_grad():
        out = model(**kw, use_cache=True, logits_to_keep=1)
        out, cache, tok = step(out.logits[:, -1].argmax(-1), getattr(out, name))
        first = out.logits[:, -1].float().cpu().numpy()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        with RssPeak() as rss:
            for _ in range(FLAGS.warmup):
                out, cache, tok = step(tok, cache)
            sync()
            t0 = time.perf_counter()
            for _ in range(FLAGS.iters):
                out, cache, tok = step(tok, cache)
            sync()
            dt = (time.perf_counter() - t0) / FLAGS.iters
    peak = torch.cuda.max_memory_allocated() if cuda else rss.growth
    return {"s_per_call": dt, "peak_bytes": int(peak)}, first


def main(argv):
    del argv
    import jax
    import numpy as np
    from segzero_jax.models.qwen2_5_vl import get_preset
    from segzero_jax.models.qwen2_5_vl.model import init_params
    import flax.linen as nn
    if FLAGS.mode == "train" and not 0 < FLAGS.new_tokens < FLAGS.seq:
        raise app.UsageError(f"--new_tokens={FLAGS.new_tokens} must be in [1, --seq)")
    try:
        cfg = get_preset(FLAGS.preset, dtype=FLAGS.dtype, param_dtype=FLAGS.dtype,
                         attention_impl=FLAGS.attention_impl, remat_policy=FLAGS.remat, scan_layers=FLAGS.scan_layers)
        ids, pixels, grid = make_inputs(cfg, FLAGS.batch, FLAGS.seq, FLAGS.image_px, np.random.RandomState(0))
    except ValueError as e:  # a preset, dtype, backend or shape the flags name wrongly
        raise app.UsageError(str(e)) from None
    params = nn.unbox(init_params(cfg, jax.random.key(0)))
    tokens = FLAGS.batch if FLAGS.mode == "decode" else FLAGS.batch * FLAGS.seq
    bench = bench_ours_decode if FLAGS.mode == "decode" else bench_ours
    ours, logits = bench(cfg, params, ids, pixels, grid)
    row = {"mode": FLAGS.mode, "preset": FLAGS.preset, "scan_layers": FLAGS.scan_layers, "batch": FLAGS.batch,
           "seq": FLAGS.seq,
           "image_px": FLAGS.image_px, "dtype": FLAGS.dtype, "device": str(jax.devices()[0].device_kind),
           **({"new_tokens": FLAGS.new_tokens, "remat": FLAGS.remat} if FLAGS.mode == "train" else {}),
           "gflops_per_call": ours["flops"] / 1e9,
           "ours_tokens_per_s": tokens / ours["s_per_call"], "ours_tflops_per_s": ours["flops"] / ours["s_per_call"] / 1e12,
           "ours_peak_bytes": ours["peak_bytes"],
           "ours_compile_s": ours["compile_s"], "ours_xla_temp_bytes": ours["xla_temp_bytes"],
           "ours_xla_argument_bytes": ours["xla_argument_bytes"]}
    if FLAGS.compare_hf:
        hf, hf_logits = bench_hf(cfg, jax.device_get(params), ids, pixels, grid)
        row.update(hf_tokens_per_s=tokens / hf["s_per_call"], hf_peak_bytes=hf["peak_bytes"],
                   hf_tflops_per_s=ours["flops"] / hf["s_per_call"] / 1e12,
                   ratio_tokens_per_s=hf["s_per_call"] / ours["s_per_call"],
                   max_abs_diff=float(np.abs(np.asarray(logits, np.float32) - hf_logits).max()))
    shape = (f"{FLAGS.batch} rows, one token per step after {FLAGS.seq}" if FLAGS.mode == "decode"
             else f"{FLAGS.batch} x {FLAGS.seq} tokens")
    print(f"{FLAGS.mode}: {FLAGS.preset}, {shape}, {FLAGS.dtype}")
    print(f"{'':>22} {'ours (jax)':>14} {'transformers':>14}")
    print(f"{'tokens/s':>22} {row['ours_tokens_per_s']:>14.1f} {row.get('hf_tokens_per_s', float('nan')):>14.1f}")
    print(f"{'TFLOP/s':>22} {row['ours_tflops_per_s']:>14.3f} {row.get('hf_tflops_per_s', float('nan')):>14.3f}")
    print(f"{'peak memory (MiB)':>22} {row['ours_peak_bytes'] / 2**20:>14.1f} "
          f"{row.get('hf_peak_bytes', float('nan')) / 2**20:>14.1f}")
    if FLAGS.compare_hf:
        print(f"{'speed ratio ours/hf':>22} {row['ratio_tokens_per_s']:>14.2f}")
        what = "loss" if FLAGS.mode == "train" else "logit"
        print(f"{f'max |{what} diff|':>22} {row['max_abs_diff']:>14.2e}")
    emit(row)


if __name__ == "__main__":
    app.run(main)
