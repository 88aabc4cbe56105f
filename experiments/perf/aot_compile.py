"""Compiles the models' jitted work ahead of time for a device topology and reports per-device
memory: will this shape fit, on this mesh, before a pod is ever booked?

  python -m experiments.perf.aot_compile --work=train --preset=3b --topology=v5p:2x2x1 --mesh=1,-1,1
  python -m experiments.perf.aot_compile --work=decode --preset=7b --topology=v5p:2x2x1 --mesh=1,1,4
  python -m experiments.perf.aot_compile --work=sam2 --sam2_preset=hiera_large --topology=v5e:2x2
  python -m experiments.perf.aot_compile --work=train --preset=tiny --mesh=2,2,2      (this host's devices)

`--topology` names a TPU slice (`v5p:2x2x1`, `v5e:2x2`, `v4:2x2x1`, `v6e:2x2`; needs `libtpu`,
`pip install -e ".[aot]"`, no TPU) with `--num_slices` for multi-slice (then `--dcn_mesh` spreads mesh axes over slices),
or one NVIDIA GPU (`gpu:h100`, `gpu:h200`; needs the CUDA plugin, `pip install -e ".[aot-gpu]"`, no GPU:
XLA compiles from the card's description, with cuBLAS for every matmul since Triton GEMMs need the
card to pick their tiles); empty compiles for this host's devices. `--census` (a GPU program) also
prints `experiments.perf.hlo_census`'s kernel census: kernels, bytes moved and a roofline time.
Params and inputs are abstract (shapes + shardings from the logical-axis rules), so nothing is
allocated; XLA's memory analysis of the compiled program gives the per-device figures.

Work (global batch `--batch`, split over the data and fsdp axes):
  train    the GRPO train step that `experiments.train` runs (`experiments.train_compile`):
           `--batch` prompts of `--prompt_len` tokens holding one `--image_px`^2 image, each
           sampled `--group_size` times for `--new_tokens` tokens, device rewards, the reference
           policy's log-probs (`--kl_coef` > 0), then the clipped update in micro-batches of
           `--micro_batch_size` responses; `--param_dtype` params with AdamW's float32 moments,
           the train state donated; the recipe's other settings
  forward  the policy's logits for prompt + response (no gradient)
  prefill  the prompt into a KV cache of capacity prompt + new tokens
  decode   one token per row against a full cache (the sampler's inner step)
  rollout_decode  one step of the sampler's loop for `--batch` prompts x `--group_size` samples:
           the B*n rows' decode step and the temperature-1 draw of their next tokens;
           `--shared_prompt`: each group reads one copy of its prompt's `--prompt_len` keys
           (grouped decode), the rows' own caches hold `--new_tokens` slots; `--noshared_prompt`:
           every row's cache holds a copy of its prompt, `--prompt_len` + `--new_tokens` slots
  sam2     SAM2 image encoder + mask decoder, a box + 2 points per image, low-res masks

Also reported, for a TPU or GPU target: lower bounds on the step time, the larger of the work's matmul
FLOPs per device at the chip's bf16 peak and its arguments read once at the chip's HBM
bandwidth (the compiler's figure is memory; time needs the chip; the train step's rollout
counts one decode step, its loop's trip count being data-dependent). Prints a table and one JSON
line; `--json_out` also writes the JSON.
"""

from __future__ import annotations

import functools
import math
import os
import time
from typing import Any

from absl import app, flags

from experiments.perf.chips import HBM_GBPS, HBM_GIB, PEAK_BF16_TFLOPS
from experiments.perf.gpu_targets import GPU_TARGETS, card_figures, gpu_target_config
from experiments.perf.report import emit

FLAGS = flags.FLAGS
flags.DEFINE_enum("work", "train", ["train", "forward", "prefill", "decode", "rollout_decode", "sam2"],
                  "what to compile")
flags.DEFINE_string("preset", "3b", "Qwen2.5-VL preset (3b, 7b, tiny)")
flags.DEFINE_string("sam2_preset", "hiera_large", "SAM2 preset for --work=sam2")
flags.DEFINE_string("topology", "", "TPU topology, e.g. v5p:2x2x1, or gpu:h100 / gpu:h200 (empty: this host's devices)")
flags.DEFINE_bool("census", False, "print the compiled GPU program's kernel census (experiments.perf.hlo_census)")
flags.DEFINE_string("hlo_out", "", "write the compiled program's text here")
flags.DEFINE_integer("num_slices", 1, "TPU slices joined over DCN")
flags.DEFINE_string("mesh", "1,-1,1", "ICI mesh sizes for (data, fsdp, tensor); one -1 takes the rest")
flags.DEFINE_string("dcn_mesh", "", "DCN mesh sizes over slices for (data, fsdp, tensor), e.g. 2,1,1")
flags.DEFINE_integer("batch", 8, "global rows (images for sam2, prompts for train)")
flags.DEFINE_integer("prompt_len", 1024, "prompt tokens per row, image placeholders included")
flags.DEFINE_integer("new_tokens", 256, "response tokens (train/forward) or cache room (prefill/decode)")
flags.DEFINE_integer("image_px", 840, "side of the square image per row (multiple of 28); 0 = text only")
flags.DEFINE_string("dtype", "bfloat16", "compute dtype")
flags.DEFINE_string("param_dtype", "", "param dtype (default: float32 for train, else the compute dtype)")
flags.DEFINE_string("remat", "full", "remat policy for train (none, full, dots, dots_no_batch, everything)")
flags.DEFINE_integer("chunk_size", 256, "positions per logits chunk in train")
flags.DEFINE_integer("group_size", 8, "train, rollout_decode: responses sampled per prompt")
flags.DEFINE_bool("shared_prompt", True, "rollout_decode: a group's samples read one copy of the prompt's keys "
                  "(--noshared_prompt: n copies, one in each row's cache)")
flags.DEFINE_integer("micro_batch_size", 8, "train: responses per gradient-accumulation step")
flags.DEFINE_integer("update_batch_size", 0, "train: prompts per optimizer update (0: --batch, one update)")
flags.DEFINE_float("kl_coef", 5e-3, "train: KL loss coefficient (0: no reference policy)")
flags.DEFINE_enum("decode_layout", "unscanned", ["unscanned", "scanned"], "train: the rollout's decoder layout "
                  "(segzero_jax.rl.sampler.DECODE_LAYOUTS)")
flags.DEFINE_bool("scan_blocks", True, "sam2: runs of Hiera blocks under one scan; --noscan_blocks: every block a "
                  "module of its own")
flags.DEFINE_bool("scan_layers", True, "policy decoder layers under one scan (params stacked, the training "
                  "layout); --noscan_layers: one module and one KV-cache buffer per layer (the decoding layout)")
flags.DEFINE_string("attention_impl", "auto",
                    "auto | xla | cudnn | tpu_flash | tpu_auto | gpu_auto (auto: what the --topology's "
                    "backend would pick, i.e. tpu_auto or gpu_auto)")
flags.DEFINE_integer("attention_pack_tokens", 128, "sam2: row length a GPU's \"auto\" packs short windows into "
                     "for cuDNN (0: they stay on XLA)", lower_bound=0)

def gpu_target() -> str:
    """The card of a `gpu:NAME` topology, or "" for a TPU topology or this host."""
    if not FLAGS.topology.startswith("gpu:"):
        return ""
    card = FLAGS.topology[4:]
    if card not in GPU_TARGETS:
        raise app.UsageError(f"--topology={FLAGS.topology!r}: the GPU targets are "
                             f"{', '.join('gpu:' + c for c in GPU_TARGETS)}")
    if FLAGS.num_slices != 1 or FLAGS.dcn_mesh:
        raise app.UsageError(f"--topology={FLAGS.topology!r} is one GPU: --num_slices and --dcn_mesh "
                             "are for TPU slices")
    return card


def prepare_gpu_target() -> None:
    """Before JAX starts its backends: let the CUDA plugin load on a host without the driver it
    checks versions against, and keep GEMMs on cuBLAS (Triton's tiles need the card)."""
    if gpu_target():
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise app.UsageError(f"expected comma-separated integers, got {text!r}") from None


def target_devices() -> list:
    import jax
    if not FLAGS.topology:
        return list(jax.devices())
    from jax.experimental import topologies
    card = gpu_target()
    if card:
        try:
            topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(card),
                                                topology="1x1x1")
        except Exception as e:  # no CUDA plugin
            raise app.UsageError(f"--topology={FLAGS.topology!r}: cannot describe this GPU ({type(e).__name__}: "
                                 f"{e}); it needs JAX's CUDA plugin: pip install -e \".[aot-gpu]\"") from None
        return list(topo.devices)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")   # no chip is used: skip libtpu's host lock
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=FLAGS.topology,
                                            num_slices=FLAGS.num_slices)
    except Exception as e:  # no libtpu, or a name libtpu does not know
        raise app.UsageError(f"--topology={FLAGS.topology!r}: cannot describe this TPU topology "
                             f"({type(e).__name__}: {e}); it needs libtpu: pip install -e \".[aot]\"") from None
    return list(topo.devices)


def _sharded(abstract_tree: Any, shardings: Any) -> Any:
    import jax
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)


def _rows(mesh, rules, shape, dtype):
    """An abstract batch-major input: dim 0 over the mesh axes of "act_batch"."""
    import jax
    from segzero_jax.parallel import named_sharding
    axes = ("act_batch",) + (None,) * (len(shape) - 1)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(axes, shape, mesh, rules))


def _policy_inputs(cfg, mesh, rules, batch: int, seq: int):
    """Abstract ids/mask `[B, T]`, patches, host grid and vision layout for one image per row."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec

    from segzero_jax.models.qwen2_5_vl import vision_layout

    rows = lambda shape, dt: _rows(mesh, rules, shape, dt)
    ids, mask = rows((batch, seq), jnp.int32), rows((batch, seq), jnp.int32)
    if not FLAGS.image_px:
        return ids, mask, None, None, None
    v = cfg.vision
    unit = v.patch_size * v.spatial_merge_size
    if FLAGS.image_px % unit:
        raise app.UsageError(f"--image_px={FLAGS.image_px} must be a multiple of {unit}")
    side = FLAGS.image_px // v.patch_size
    n_tokens = (side // v.spatial_merge_size) ** 2
    if n_tokens + 3 > FLAGS.prompt_len:
        raise app.UsageError(f"--prompt_len={FLAGS.prompt_len} cannot hold the {n_tokens} image tokens")
    grid = np.array([[1, side, side]] * batch, np.int32)
    pixels = rows((batch * side * side, v.patch_dim), jnp.float32)
    replicated = NamedSharding(mesh, PartitionSpec())
    layout = {k: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated)
              for k, a in vision_layout(grid, cfg.vision).items()}
    return ids, mask, pixels, grid, layout


def auto_choice() -> str:
    """"auto" resolves by the backend at trace time, which is this host's; for a TPU or GPU target
    the choice is what that backend picks (`layers.AUTO_CHOICES`)."""
    if not FLAGS.topology:
        return "auto"
    return "gpu_auto" if gpu_target() else "tpu_auto"


def attention_impl() -> str:
    """--attention_impl, its "auto" as the target backend picks it (`auto_choice`)."""
    return auto_choice() if FLAGS.attention_impl == "auto" else FLAGS.attention_impl


def build_policy_work(mesh, rules, attention: str):
    """(jitted function, abstract args, description) for the policy works, attention by `attention`."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, cache_logical_axes, get_preset, init_cache
    from segzero_jax.models.qwen2_5_vl.cache import is_axes
    from segzero_jax.models.qwen2_5_vl.model import init_params
    from segzero_jax.parallel import logical_shardings, named_sharding

    work = FLAGS.work
    if work == "train":
        return build_train_work(mesh, rules, attention)
    param_dtype = FLAGS.param_dtype or FLAGS.dtype
    cfg = get_preset(FLAGS.preset, dtype=FLAGS.dtype, param_dtype=param_dtype, attention_impl=attention,
                     remat_policy="none", scan_layers=FLAGS.scan_layers)
    model = Qwen2_5_VL(cfg)
    boxed = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
    p_shardings = logical_shardings(boxed, mesh, rules)
    params = _sharded(nn.unbox(boxed), p_shardings)
    b, p_len, r = FLAGS.batch, FLAGS.prompt_len, FLAGS.new_tokens
    desc = {"preset": FLAGS.preset, "param_dtype": param_dtype, "dtype": FLAGS.dtype,
            "attention": attention, "scan_layers": FLAGS.scan_layers}

    if work == "forward":
        ids, mask, pixels, grid, layout = _policy_inputs(cfg, mesh, rules, b, p_len + r)
        gridj = None if grid is None else jnp.asarray(grid)
        desc.update(tokens_per_row=p_len + r, response_tokens=r, image_px=FLAGS.image_px)

        def forward(p, i, m, pv, lay):
            return model.apply({"params": p}, i, pv, gridj, m, vision_layout=lay)
        return jax.jit(forward), (params, ids, mask, pixels, layout), desc

    capacity = p_len + r
    cache = jax.eval_shape(lambda: init_cache(cfg, b, capacity))
    axes = cache_logical_axes(cfg)
    c_shardings = jax.tree.map(lambda ax, a: named_sharding(ax, a.shape, mesh, rules), axes, cache, is_leaf=is_axes)
    cache = _sharded(cache, c_shardings)
    desc.update(cache_capacity=capacity, kv_cache_bytes_global=int(sum(
        math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(cache))))
    if work == "prefill":
        ids, mask, pixels, grid, layout = _policy_inputs(cfg, mesh, rules, b, p_len)
        gridj = None if grid is None else jnp.asarray(grid)
        desc.update(prompt_len=p_len, image_px=FLAGS.image_px)

        def prefill(p, c, i, m, pv, lay):
            return model.apply({"params": p}, i, c, pv, gridj, m, vision_layout=lay, method=Qwen2_5_VL.prefill)

        return jax.jit(prefill, donate_argnums=(1,)), (params, cache, ids, mask, pixels, layout), desc

    tokens = _rows(mesh, rules, (b,), jnp.int32)

    def decode(p, c, t):
        return model.apply({"params": p}, t, c, method=Qwen2_5_VL.decode)

    return jax.jit(decode, donate_argnums=(1,)), (params, cache, tokens), desc


def build_train_work(mesh, rules, attention: str):
    """The GRPO train step that `experiments.train` runs (`experiments.train_compile`), on the
    recipe's settings with the shapes and choices of the flags."""
    from experiments.train_compile import CompileError, build_train_step
    from segzero_jax.models.qwen2_5_vl import get_preset
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
    from segzero_jax.rl.byte_table import byte_table_for_tokenizer
    from segzero_jax.rl.trainer import GRPOSettings, make_optimizer

    param_dtype = FLAGS.param_dtype or "float32"
    cfg = get_preset(FLAGS.preset, dtype=FLAGS.dtype, param_dtype=param_dtype, attention_impl=attention,
                     remat_policy=FLAGS.remat, scan_layers=FLAGS.scan_layers)
    try:
        settings = GRPOSettings(group_size=FLAGS.group_size, max_new_tokens=FLAGS.new_tokens,
                                image_size=FLAGS.image_px or 840, kl_coef=FLAGS.kl_coef,
                                update_batch_size=FLAGS.update_batch_size or FLAGS.batch,
                                micro_batch_size=FLAGS.micro_batch_size, chunk_size=FLAGS.chunk_size,
                                decode_layout=FLAGS.decode_layout)
        work = build_train_step(cfg, settings, make_optimizer(1e-6, weight_decay=1e-2, grad_clip_norm=1.0),
                                byte_table_for_tokenizer(QwenTokenizer.default()), mesh, rules,
                                batch_size=FLAGS.batch, prompt_len=FLAGS.prompt_len, image_size=FLAGS.image_px)
    except (CompileError, ValueError) as e:
        raise app.UsageError(str(e)) from None
    desc = {"preset": FLAGS.preset, "scan_layers": FLAGS.scan_layers, "optimizer": "adamw (float32 moments)",
            **work.desc}
    return work.fn, work.args, desc


def build_rollout_decode_work(mesh, rules, attention: str):
    """(jitted step, abstract args, description) of one step of the sampler's loop
    (`segzero_jax.rl.sampler.sample`): `Qwen2_5_VL.decode` of the B*n rows (prompt-major), on
    the shared prompt cache of the B prompts or on caches holding n copies of it, then
    `choose_tokens` at temperature 1; the rows' own cache is donated."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from segzero_jax.models.qwen2_5_vl import Qwen2_5_VL, cache_logical_axes, get_preset, init_cache
    from segzero_jax.models.qwen2_5_vl.cache import is_axes
    from segzero_jax.models.qwen2_5_vl.model import init_params
    from segzero_jax.parallel import logical_shardings, named_sharding
    from segzero_jax.rl.sampler import SamplingConfig, choose_tokens

    if FLAGS.group_size < 1:
        raise app.UsageError(f"--group_size={FLAGS.group_size} must be positive")
    param_dtype = FLAGS.param_dtype or FLAGS.dtype
    cfg = get_preset(FLAGS.preset, dtype=FLAGS.dtype, param_dtype=param_dtype, attention_impl=attention,
                     remat_policy="none", scan_layers=FLAGS.scan_layers)
    model = Qwen2_5_VL(cfg)
    boxed = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.key(0))
    params = _sharded(nn.unbox(boxed), logical_shardings(boxed, mesh, rules))
    b, n, p_len, r = FLAGS.batch, FLAGS.group_size, FLAGS.prompt_len, FLAGS.new_tokens
    axes = cache_logical_axes(cfg)

    def abstract_cache(rows: int, capacity: int):
        cache = jax.eval_shape(lambda: init_cache(cfg, rows, capacity))
        shardings = jax.tree.map(lambda ax, a: named_sharding(ax, a.shape, mesh, rules), axes, cache,
                                 is_leaf=is_axes)
        return _sharded(cache, shardings)

    if FLAGS.shared_prompt:
        prompt, own = abstract_cache(b, p_len), abstract_cache(b * n, r)
    else:
        prompt, own = None, abstract_cache(b * n, p_len + r)
    sc = SamplingConfig(group_size=n, max_new_tokens=r, shared_prompt=FLAGS.shared_prompt)

    def step(p, cache, prompt_cache, tokens, index):
        logits, cache = model.apply({"params": p}, tokens, cache, prompt_cache, method=Qwen2_5_VL.decode)
        new, log_probs = choose_tokens(logits, jax.random.fold_in(jax.random.key(0), index), sc)
        return new, log_probs, cache

    tokens = _rows(mesh, rules, (b * n,), jnp.int32)
    index = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec()))
    cache_bytes = lambda c: int(sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(c)))  # noqa: E731
    desc = {"preset": FLAGS.preset, "param_dtype": param_dtype, "dtype": FLAGS.dtype, "attention": attention,
            "scan_layers": FLAGS.scan_layers, "group_size": n, "rows": b * n, "shared_prompt": FLAGS.shared_prompt,
            "prompt_len": p_len, "cache_capacity": r if FLAGS.shared_prompt else p_len + r,
            "kv_cache_bytes_global": cache_bytes(own) + cache_bytes(prompt)}
    return jax.jit(step, donate_argnums=(1,)), (params, own, prompt, tokens, index), desc


def cost_row(compiled, device_kind: str) -> dict:
    """XLA's cost analysis of the compiled program: the bytes its operations access (each
    operation's operands and results; a loop body counts once) and that traffic's time at the
    chip's HBM bandwidth. None where the compiler gives no analysis (a GPU target compiled
    without the card: its `--census` counts the bytes instead) or this host has no bandwidth."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    accessed = cost.get("bytes accessed") if isinstance(cost, dict) else None
    accessed = int(accessed) if accessed else None
    bandwidth = HBM_GBPS.get(device_kind)
    return {"bytes_accessed": accessed,
            "ms_bytes_accessed": round(accessed / (bandwidth * 1e9) * 1e3, 3) if accessed and bandwidth else None}


def build_sam2_work(mesh, rules, attention: str):
    import jax
    import jax.numpy as jnp

    from segzero_jax.models.sam2 import get_preset, low_res_masks
    from segzero_jax.models.sam2.convert import param_shardings
    from segzero_jax.models.sam2.model import abstract_params
    import flax.linen as nn

    param_dtype = FLAGS.param_dtype or FLAGS.dtype
    cfg = get_preset(FLAGS.sam2_preset, dtype=getattr(jnp, FLAGS.dtype), param_dtype=getattr(jnp, param_dtype),
                     attention_implementation=attention, trunk_gelu=auto_choice(),
                     attention_pack_tokens=FLAGS.attention_pack_tokens, scan_blocks=FLAGS.scan_blocks)
    params = _sharded(nn.unbox(abstract_params(cfg)), param_shardings(cfg, mesh, rules))
    b, s = FLAGS.batch, cfg.image_size
    rows = lambda shape, dt: _rows(mesh, rules, shape, dt)
    images = rows((b, s, s, 3), jnp.float32)
    boxes, points, labels = rows((b, 4), jnp.float32), rows((b, 2, 2), jnp.float32), rows((b, 2), jnp.int32)
    segment = functools.partial(low_res_masks, config=cfg)

    desc = {"sam2_preset": FLAGS.sam2_preset, "image_size": s, "param_dtype": param_dtype, "dtype": FLAGS.dtype,
            "attention": attention, "attention_pack_tokens": cfg.attention_pack_tokens,
            "trunk_activation": cfg.trunk_activation(), "scan_blocks": cfg.scan_blocks}
    return jax.jit(segment), (params, images, boxes, points, labels), desc


def memory_row(compiled, devices) -> dict:
    mem = compiled.memory_analysis()
    get = lambda name: int(getattr(mem, name, 0) or 0)
    row = {"argument_bytes": get("argument_size_in_bytes"), "output_bytes": get("output_size_in_bytes"),
           "alias_bytes": get("alias_size_in_bytes"), "temp_bytes": get("temp_size_in_bytes"),
           "code_bytes": get("generated_code_size_in_bytes")}
    row["peak_bytes"] = (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
                         + row["code_bytes"])
    kind = str(getattr(devices[0], "device_kind", ""))
    hbm = HBM_GIB.get(kind)
    if hbm is None and not FLAGS.topology:
        stats = devices[0].memory_stats() or {}
        hbm = stats.get("bytes_limit", 0) / 2**30 or None
    row["device_memory_gib"] = hbm
    row["fits"] = None if hbm is None else row["peak_bytes"] <= hbm * 2**30
    return row


def roofline_row(build, mesh, rules, devices, argument_bytes: int) -> dict:
    """Lower bounds on the step time of one chip. Compute: the work's matmul FLOPs per device
    (`segzero_jax.flops`, remat's recomputation included; XLA's cost analysis counts a scanned
    layer once), traced on the XLA attention path (the TPU kernel is an opaque call), at the
    chip's bf16 peak. Memory: every argument (params, optimizer state, KV cache, inputs) read
    once from HBM. The larger of the two is the bound; the compiler's figure is memory, time
    needs the chip."""
    import flax.linen as nn
    import jax

    from segzero_jax.flops import count_flops

    fn, args, _ = build(mesh, rules, "xla")
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        per_device = count_flops(fn.__wrapped__, *args) / len(devices)
    kind = str(getattr(devices[0], "device_kind", ""))
    peak, bandwidth = PEAK_BF16_TFLOPS.get(kind), HBM_GBPS.get(kind)
    row = {"gflops_per_device": round(per_device / 1e9, 6), "ms_compute_at_peak": None,
           "ms_reading_arguments": None, "ms_lower_bound": None}
    if peak and bandwidth:
        row["ms_compute_at_peak"] = round(per_device / (peak * 1e12) * 1e3, 3)
        row["ms_reading_arguments"] = round(argument_bytes / (bandwidth * 1e9) * 1e3, 3)
        row["ms_lower_bound"] = max(row["ms_compute_at_peak"], row["ms_reading_arguments"])
    return row


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    prepare_gpu_target()
    import flax.linen as nn
    import jax

    from segzero_jax.parallel import DEFAULT_RULES, make_mesh

    from segzero_jax.models import qwen2_5_vl, sam2

    if FLAGS.batch < 1 or FLAGS.new_tokens < 1 or FLAGS.prompt_len < 1:
        raise app.UsageError("--batch, --prompt_len and --new_tokens must be positive")
    if FLAGS.work == "sam2" and FLAGS.sam2_preset not in sam2.PRESETS:
        raise app.UsageError(f"--sam2_preset={FLAGS.sam2_preset!r} is not one of {sorted(sam2.PRESETS)}")
    if FLAGS.work != "sam2" and FLAGS.preset not in qwen2_5_vl.PRESETS:
        raise app.UsageError(f"--preset={FLAGS.preset!r} is not one of {sorted(qwen2_5_vl.PRESETS)}")
    devices = target_devices()
    on_gpu = bool(gpu_target()) or (not FLAGS.topology and devices[0].platform == "gpu")
    if FLAGS.census and not on_gpu:
        raise app.UsageError("--census reads a GPU program: pass --topology=gpu:h100 (or gpu:h200) "
                             "or run on a GPU host")
    dcn = _ints(FLAGS.dcn_mesh) if FLAGS.dcn_mesh else None
    try:
        mesh = make_mesh(_ints(FLAGS.mesh), dcn_mesh_shape=dcn, devices=devices)
    except ValueError as e:
        raise app.UsageError(f"--mesh={FLAGS.mesh!r}: {e}") from None
    rules = DEFAULT_RULES
    t0 = time.perf_counter()
    build = {"sam2": build_sam2_work, "rollout_decode": build_rollout_decode_work}.get(FLAGS.work, build_policy_work)
    fn, args, desc = build(mesh, rules, attention_impl())
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        lowered = fn.lower(*args)
        compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    row = {"work": FLAGS.work, "topology": FLAGS.topology or "local", "num_slices": FLAGS.num_slices,
           "device_kind": str(getattr(devices[0], "device_kind", "")), "devices": len(devices),
           "mesh": dict(zip(mesh.axis_names, (int(x) for x in mesh.devices.shape))), "batch": FLAGS.batch,
           **desc, "compile_s": round(compile_s, 1), **memory_row(compiled, devices)}
    row.update(roofline_row(build, mesh, rules, devices, row["argument_bytes"]))
    row.update(cost_row(compiled, row["device_kind"]))
    text = compiled.as_text() if (FLAGS.census or FLAGS.hlo_out) else ""
    if FLAGS.hlo_out:
        with open(FLAGS.hlo_out, "w") as f:
            f.write(text)
    gib = lambda x: f"{x / 2**30:.2f} GiB"
    print(f"{FLAGS.work} on {row['topology']} ({row['device_kind']}, {len(devices)} devices), mesh {row['mesh']}, "
          f"batch {FLAGS.batch}; compiled in {compile_s:.1f} s")
    print(f"{'per device':>22}")
    for key in ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes"):
        print(f"{key.replace('_bytes', ''):>22} {gib(row[key]):>12}")
    if row["device_memory_gib"]:
        print(f"{'device memory':>22} {row['device_memory_gib']:>8.1f} GiB  fits: {row['fits']}")
    print(f"{'matmul work':>22} {row['gflops_per_device']:>8.1f} GFLOP per device")
    if row["ms_lower_bound"] is not None:
        print(f"{'step time >=':>22} {row['ms_lower_bound']:>8.2f} ms (compute at the bf16 peak "
              f"{row['ms_compute_at_peak']} ms, reading the arguments once {row['ms_reading_arguments']} ms)")
    if row["bytes_accessed"]:
        at = f", {row['ms_bytes_accessed']} ms at the HBM bandwidth" if row["ms_bytes_accessed"] is not None else ""
        print(f"{'bytes accessed':>22} {row['bytes_accessed'] / 1e9:>8.3f} GB (XLA's cost analysis{at})")
    if FLAGS.census:
        from experiments.perf import hlo_census
        kind = row["device_kind"]
        if kind not in HBM_GBPS:
            kind = card_figures("h100")[0]
            print(f"(the roofline uses the {kind}'s figures: {row['device_kind']!r} has none here)")
        bandwidth, peak = HBM_GBPS[kind], PEAK_BF16_TFLOPS[kind]
        kernels = hlo_census.census(text, bandwidth, peak)
        row["census"] = hlo_census.summarize(kernels, bandwidth, peak)
        print()
        hlo_census.print_summary(row["census"], kernels, 15)
    emit(row)


if __name__ == "__main__":
    app.run(main)
