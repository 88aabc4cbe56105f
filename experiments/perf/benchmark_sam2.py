"""SAM2 encoder + decoder throughput (images/s) against a PyTorch peer in the same run.

  python -m experiments.perf.benchmark_sam2 --preset=hiera_large --batch=16 --dtype=bfloat16
  python -m experiments.perf.benchmark_sam2 --preset=test_tiny --batch=4 --peer=sam2      (CPU)

Work per image: one S x S image and Seg-Zero's prompt (a box + 2 positive points), image
encoder + prompt encoder + mask decoder, multimask output. Timed for us:
  * "lowres": the jitted encoder + decoder to low-res logits and scores (what the peers compute);
  * "predict_batch": the evaluator's path, plus the best mask upsampled to S x S and thresholded.
Peers (random weights, same architecture, same inputs): Meta's `sam2` (`--peer=sam2`, needs the
package) or transformers' `Sam2Model` (`--peer=transformers`); `auto` takes sam2 when importable,
else transformers, else none. TFLOP/s divide the work's matmul + convolution FLOPs
(`segzero_jax.flops`, counted once on our XLA attention path) by each run's time, so they
compare like images/s and give the utilisation against the card's peak. Prints a table and one
JSON line (also written to --json_out). `--profile_dir=DIR` also traces two low-res calls and
keeps their HLO for `python -m experiments.perf.profile_summary --trace=DIR`.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from experiments.perf.profiling import profile
from experiments.perf.report import emit

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "hiera_large", "SAM2 preset (hiera_tiny/small/base_plus/large, test_tiny)")
flags.DEFINE_integer("batch", 16, "images per call (one box + 2 points each)")
flags.DEFINE_string("dtype", "bfloat16", "compute dtype: bfloat16 | float32")
flags.DEFINE_string("param_dtype", "", "param dtype (default: the compute dtype; the model is frozen)")
flags.DEFINE_string("attention_impl", "auto", "auto | xla | cudnn | cudnn_packed")
flags.DEFINE_integer("attention_pack_tokens", 128, "row length \"auto\" packs short windows into for cuDNN on a GPU "
                     "(0: they stay on XLA)", lower_bound=0)
flags.DEFINE_string("trunk_gelu", "auto", "the trunk MLP's GELU: auto (tanh on a GPU in 16-bit compute) | exact | tanh | gpu_auto | tpu_auto")
flags.DEFINE_bool("scan_blocks", True, "runs of Hiera blocks under one scan (params stacked); --noscan_blocks: "
                  "every block a module of its own (no loop, no per-block weight copies)")
flags.DEFINE_string("peer", "auto", "auto | sam2 | transformers | none")
flags.DEFINE_integer("warmup", 1, "untimed calls after compilation")
flags.DEFINE_integer("iters", 5, "timed calls (the median is reported)")
flags.DEFINE_bool("predict_batch", True, "also time the evaluator's path (one more compilation)")
flags.DEFINE_bool("error_vs_float32", False, "also report how far the low-res logits and scores land from "
                  "the float32 model's (exact GELU) on the same params and inputs")


def _median_seconds(fn, sync, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        sync(fn())
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _prompts(batch: int, size: int):
    """Seg-Zero's prompt per image, in pixels of the S x S input."""
    import numpy as np
    f = size / 1024.0
    boxes = np.tile(np.array([100.0, 100.0, 500.0, 600.0], np.float32) * f, (batch, 1, 1))
    points = np.tile(np.array([[200.0, 300.0], [300.0, 400.0]], np.float32) * f, (batch, 1, 1, 1))
    labels = np.ones((batch, 1, 2), np.int32)
    return boxes, points, labels


def _lowres_fn(cfg):
    """Encoder + decoder to low-res logits and scores (what the peers compute), on the benchmark's
    [B, 1, ...] prompts."""
    from segzero_jax.models.sam2 import low_res_masks

    return lambda params, images, boxes, points, labels: low_res_masks(
        params, images, boxes[:, 0], points[:, 0], labels[:, 0], config=cfg)


def _error_vs_float32(cfg, params, inputs, got) -> dict:
    """This run's low-res logits and IoU scores against the float32 model's (exact trunk GELU, the
    reference's function: the parity tests pin it to Meta's sam2) on float32 copies of the same
    params and the same inputs."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    ref_cfg = cfg.replace(dtype=jnp.float32, param_dtype=jnp.float32, trunk_gelu="exact")
    f32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    (logits, scores), (ref_logits, ref_scores) = (
        [np.asarray(a, np.float32) for a in out] for out in (got, jax.jit(_lowres_fn(ref_cfg))(f32, *inputs)))
    g = lambda x: float(f"{x:.4g}")
    return {"logits_mean_abs": g(np.abs(logits - ref_logits).mean()),
            "logits_max_abs": g(np.abs(logits - ref_logits).max()),
            "reference_logits_mean_abs": g(np.abs(ref_logits).mean()),
            "mask_sign_agreement": g(((logits > 0) == (ref_logits > 0)).mean()),
            "scores_max_abs": g(np.abs(scores - ref_scores).max())}


def _rate(seconds: float, batch: int, flops: int) -> dict:
    return {"seconds": round(seconds, 4), "images_per_s": round(batch / seconds, 2),
            "tflops_per_s": float(f"{flops / seconds / 1e12:.4g}")}   # 4 significant digits


def bench_jax(cfg, batch: int) -> dict:
    import jax
    import jax.numpy as jnp

    from segzero_jax.flops import count_flops
    from segzero_jax.models.sam2 import predict_batch, random_params

    s = cfg.image_size
    t0 = time.perf_counter()
    params = jax.jit(lambda k: random_params(cfg, k))(jax.random.PRNGKey(0))
    images = jax.random.normal(jax.random.PRNGKey(1), (batch, s, s, 3), jnp.float32)
    inputs = (images, *(jnp.asarray(a) for a in _prompts(batch, s)))
    lowres_compiled = jax.jit(_lowres_fn(cfg)).lower(params, *inputs).compile()

    def lowres():
        return lowres_compiled(params, *inputs)

    def full():
        return predict_batch(params, *inputs, (s, s), config=cfg, best_only=True)

    sync = jax.block_until_ready
    sync(lowres())
    if FLAGS.predict_batch:
        sync(full())
    setup_s = time.perf_counter() - t0
    t_low = _median_seconds(lowres, sync, FLAGS.warmup, FLAGS.iters)
    t_full = _median_seconds(full, sync, FLAGS.warmup, FLAGS.iters) if FLAGS.predict_batch else None
    profile(lowres, lowres_compiled, "lowres")   # with --profile_dir
    # Matmul + convolution FLOPs of the low-res work, counted on the XLA attention path (same math).
    flops = count_flops(_lowres_fn(cfg.replace(attention_implementation="xla")), params, *inputs)
    n_params = sum(x.size for x in jax.tree.leaves(params))
    out = {"name": "segzero_jax", "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
           "params_M": round(n_params / 1e6, 1), "setup_and_compile_s": round(setup_s, 1),
           "flops_per_call": flops, "gflops_per_image": round(flops / batch / 1e9, 1),
           "lowres": _rate(t_low, batch, flops)}
    if t_full is not None:
        out["predict_batch"] = _rate(t_full, batch, flops)
    if FLAGS.error_vs_float32:
        out["error_vs_float32"] = _error_vs_float32(cfg, params, inputs, lowres())
    return out


def _torch_setup(dtype_name: str):
    import torch
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if (dtype_name == "bfloat16" and dev == "cuda") else torch.float32
    return torch, dev, dt


def bench_meta_sam2(cfg, batch: int) -> dict:
    torch, dev, dt = _torch_setup(FLAGS.dtype)
    from sam2.build_sam import build_sam2

    from segzero_jax.models.sam2.config import META_CONFIG_FILES, meta_hydra_overrides

    if FLAGS.preset in META_CONFIG_FILES:
        model = build_sam2(META_CONFIG_FILES[FLAGS.preset], ckpt_path=None, device=dev)
    else:
        model = build_sam2(META_CONFIG_FILES["hiera_tiny"], ckpt_path=None, device=dev,
                           hydra_overrides_extra=meta_hydra_overrides(cfg))
    model = model.eval()
    s = cfg.image_size
    boxes, points, labels = (torch.as_tensor(a, device=dev) for a in _prompts(batch, s))
    coords = torch.cat([boxes.reshape(batch, 2, 2), points[:, 0]], dim=1)
    labs = torch.cat([torch.tensor([[2, 3]], device=dev).repeat(batch, 1), labels[:, 0]], dim=1)
    images = torch.randn(batch, 3, s, s, device=dev)

    def run():
        with torch.no_grad(), torch.autocast(dev, dtype=dt, enabled=dt != torch.float32):
            out = model.forward_image(images)
            _, feats, _, _ = model._prepare_backbone_features(out)
            feats[-1] = feats[-1] + model.no_mem_embed
            n = s // 16
            shapes = [(4 * n, 4 * n), (2 * n, 2 * n), (n, n)]
            feats = [f.permute(1, 2, 0).reshape(batch, -1, *hw) for f, hw in zip(feats, shapes)]
            sparse, dense = model.sam_prompt_encoder(points=(coords, labs), boxes=None, masks=None)
            return model.sam_mask_decoder(image_embeddings=feats[-1],
                                          image_pe=model.sam_prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=True, repeat_image=False,
                                          high_res_features=feats[:-1])

    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    sync(run())
    t = _median_seconds(run, sync, FLAGS.warmup, FLAGS.iters)
    return {"name": "meta_sam2", "device": dev, "torch": torch.__version__, "dtype": str(dt), "seconds": t}


def bench_transformers(cfg, batch: int) -> dict:
    torch, dev, dt = _torch_setup(FLAGS.dtype)
    import transformers
    from transformers import Sam2Config as HfSam2Config
    from transformers import Sam2Model

    from segzero_jax.models.sam2.config import transformers_config_kwargs

    s = cfg.image_size
    hf_cfg = HfSam2Config(**transformers_config_kwargs(cfg))
    with torch.device(dev):
        model = Sam2Model(hf_cfg).to(dt).eval()
    boxes, points, labels = (torch.as_tensor(a, device=dev) for a in _prompts(batch, s))
    images = torch.randn(batch, 3, s, s, device=dev, dtype=dt)

    def run():
        with torch.no_grad():
            return model(pixel_values=images, input_points=points.to(dt), input_labels=labels.long(),
                         input_boxes=boxes.to(dt), multimask_output=True)

    sync = (lambda _: torch.cuda.synchronize()) if dev == "cuda" else (lambda _: None)
    sync(run())
    t = _median_seconds(run, sync, FLAGS.warmup, FLAGS.iters)
    return {"name": "transformers_Sam2Model", "device": dev, "torch": torch.__version__,
            "transformers": transformers.__version__, "dtype": str(dt), "seconds": t}


PEERS = {"sam2": bench_meta_sam2, "transformers": bench_transformers}


def _pick_peer(name: str) -> str:
    if name != "auto":
        return name
    for candidate, module in (("sam2", "sam2.build_sam"), ("transformers", "transformers")):
        try:
            __import__(module)
            return candidate
        except Exception:  # missing package or a broken optional dependency
            continue
    return "none"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax.numpy as jnp

    from segzero_jax.models.sam2 import get_preset

    if FLAGS.dtype not in ("bfloat16", "float32"):
        raise app.UsageError(f"--dtype={FLAGS.dtype!r} must be bfloat16 or float32")
    from segzero_jax.models.sam2 import PRESETS

    if FLAGS.preset not in PRESETS:
        raise app.UsageError(f"--preset={FLAGS.preset!r} is not one of {sorted(PRESETS)}")
    param_dtype = FLAGS.param_dtype or FLAGS.dtype
    try:
        cfg = get_preset(FLAGS.preset, dtype=getattr(jnp, FLAGS.dtype), param_dtype=getattr(jnp, param_dtype),
                         attention_implementation=FLAGS.attention_impl, trunk_gelu=FLAGS.trunk_gelu,
                         attention_pack_tokens=FLAGS.attention_pack_tokens, scan_blocks=FLAGS.scan_blocks)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    result = {"preset": FLAGS.preset, "batch": FLAGS.batch, "image_size": cfg.image_size,
              "dtype": FLAGS.dtype, "param_dtype": param_dtype, "prompt": "box + 2 points, multimask",
              "attention": FLAGS.attention_impl, "attention_pack_tokens": cfg.attention_pack_tokens,
              "trunk_activation": cfg.trunk_activation(), "scan_blocks": cfg.scan_blocks}
    result["ours"] = bench_jax(cfg, FLAGS.batch)
    peer = _pick_peer(FLAGS.peer)
    if peer != "none":
        try:
            result["peer"] = PEERS[peer](cfg, FLAGS.batch)
            result["peer"]["lowres"] = _rate(result["peer"].pop("seconds"), FLAGS.batch,
                                             result["ours"]["flops_per_call"])
            result["speedup_lowres"] = round(result["ours"]["lowres"]["images_per_s"]
                                             / result["peer"]["lowres"]["images_per_s"], 2)
        except Exception as e:  # report and keep our numbers
            result["peer"] = {"name": peer, "error": repr(e)[:300]}
    rows = [(f"segzero_jax {path}", result["ours"][path]) for path in ("lowres", "predict_batch")
            if path in result["ours"]]
    if "lowres" in result.get("peer", {}):
        rows.append((f"{result['peer']['name']} lowres", result["peer"]["lowres"]))
    print(f"SAM2 {FLAGS.preset}, {FLAGS.batch} images {cfg.image_size}^2, box + 2 points, {FLAGS.dtype}, "
          f"{result['ours']['gflops_per_image']} GFLOP per image (matmuls + convolutions)")
    print(f"{'run':32s} {'s/batch':>10s} {'images/s':>10s} {'TFLOP/s':>10s}")
    for name, r in rows:
        print(f"{name:32s} {r['seconds']:10.4f} {r['images_per_s']:10.2f} {r['tflops_per_s']:10.4g}")
    if "speedup_lowres" in result:
        print(f"speed-up over {result['peer']['name']}: {result['speedup_lowres']}x")
    if "error_vs_float32" in result["ours"]:
        e = result["ours"]["error_vs_float32"]
        print(f"against float32 (exact GELU): logits mean |error| {e['logits_mean_abs']} (max {e['logits_max_abs']}, "
              f"mean |logit| {e['reference_logits_mean_abs']}), mask-sign agreement {e['mask_sign_agreement']}, "
              f"scores max |error| {e['scores_max_abs']}")
    emit(result)


if __name__ == "__main__":
    app.run(main)
