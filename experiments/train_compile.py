r"""Ahead-of-time compile of the GRPO train step: does a config fit its devices, before they are booked?

  python -m experiments.train --config=experiments/configs/seg_zero_7b.py --compile_only \
      --topology=v5p:2x2x1 --config.mesh.shape='(1,4,1)'
  python -m experiments.train --config=experiments/configs/default.py --compile_only   (this host)

The function compiled is `segzero_jax.rl.trainer.train_step`, jitted by `make_train_step` with
the shardings `experiments.train` gives it (state by `train_state_shardings`, the reference
policy as the params, batch rows over the data axes; state donated), traced under the config's
mesh and logical-axis rules. Every input is abstract (`jax.eval_shape`: shapes, dtypes and
shardings, nothing allocated): the policy of `model.policy_preset` in `model.param_dtype`, its
AdamW state, the reference policy when `rl.kl_coef` > 0, and a batch of the config's shapes
(`data.batch_size` prompts of `data.max_prompt_length` tokens, one `data.image_size`^2 image
each, a box and two points), with the default Qwen2.5 tokenizer's byte table for the device
reward. XLA's memory analysis of the compiled program gives the per-chip figures:

  total = arguments + outputs - aliased (donated state updated in place) + temporaries + code

against the chip's memory (`experiments.perf.chips`; this host's devices: their memory limit,
or for CPU devices the host's RAM divided among them). A TPU compile that runs out of memory is
reported the same way, with the compiler's own figure.

`--topology` names a TPU slice (`v5p:2x2x1`; libtpu on any host, no TPU: `pip install -e
".[aot]"`) or one GPU (`gpu:h100`, `gpu:h200`; JAX's CUDA plugin, `.[aot-gpu]`); empty is this
host's devices. The mesh is `config.mesh.shape` (and `mesh.dcn_shape` over `num_slices` slices)
over the target's devices, and `model.attention_impl="auto"` becomes what the target's backend
picks (`tpu_auto`, `gpu_auto`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Optional

GIB = 2**30


class CompileError(ValueError):
    """The target or the config cannot be compiled; the message names what to change."""


# -- target ------------------------------------------------------------------------------------

def target_devices(topology: str = "", num_slices: int = 1) -> list:
    """This host's devices (""), a TPU slice's (e.g. "v5p:2x2x1", via libtpu) or one GPU's ("gpu:h100")."""
    import jax
    if not topology:
        if num_slices != 1:
            raise CompileError(f"num_slices={num_slices} needs a TPU topology")
        return list(jax.devices())
    from jax.experimental import topologies
    if topology.startswith("gpu:"):
        from experiments.perf.gpu_targets import GPU_TARGETS, gpu_target_config
        card = topology[4:]
        if card not in GPU_TARGETS:
            raise CompileError(f"topology {topology!r}: the GPU targets are {', '.join('gpu:' + c for c in GPU_TARGETS)}")
        if num_slices != 1:
            raise CompileError(f"topology {topology!r} is one GPU: num_slices is for TPU slices")
        # as experiments.perf.aot_compile: load the plugin without the driver; GEMMs on cuBLAS
        # (Triton's tiles need the card). XLA reads the flags when the CUDA client starts, here.
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        if "--xla_gpu_enable_triton_gemm" not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_gpu_enable_triton_gemm=false").strip()
        try:
            topo = topologies.get_topology_desc(platform="cuda", target_config=gpu_target_config(card),
                                                topology="1x1x1")
        except Exception as e:  # no CUDA plugin
            raise CompileError(f"topology {topology!r}: cannot describe this GPU ({type(e).__name__}: {e}); "
                               "it needs JAX's CUDA plugin: pip install -e \".[aot-gpu]\"") from None
        return list(topo.devices)
    # A topology's compile uses no chip: it need not hold libtpu's one-process-per-host lock, so
    # several compiles (or a compile beside a test run) can share a host.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topo = topologies.get_topology_desc(platform="tpu", topology_name=topology, num_slices=num_slices)
    except Exception as e:  # no libtpu, or a name libtpu does not know
        raise CompileError(f"topology {topology!r}: cannot describe this TPU topology ({type(e).__name__}: "
                           f"{e}); it needs libtpu: pip install -e \".[aot]\"") from None
    return list(topo.devices)


def target_attention(attention_impl: str, topology: str) -> str:
    """"auto" resolves by the tracing host's backend: for a TPU or GPU target, what that target picks."""
    if attention_impl != "auto" or not topology:
        return attention_impl
    return "gpu_auto" if topology.startswith("gpu:") else "tpu_auto"


def device_capacity(devices: list) -> tuple[Optional[float], str]:
    """(memory per device in GiB, where the figure comes from), or (None, reason)."""
    from experiments.perf.chips import HBM_GIB
    kind = str(getattr(devices[0], "device_kind", ""))
    if kind in HBM_GIB:
        return float(HBM_GIB[kind]), f"{kind} HBM"
    if getattr(devices[0], "platform", "") == "cpu":
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return ram / len(devices) / GIB, f"host RAM / {len(devices)} CPU devices"
    try:
        limit = (devices[0].memory_stats() or {}).get("bytes_limit", 0)
    except Exception:  # a topology's devices have no runtime
        limit = 0
    return (limit / GIB, f"{kind} memory limit") if limit else (None, f"unknown for {kind!r}")


# -- abstract inputs ---------------------------------------------------------------------------

def _with_sharding(tree: Any, shardings: Any) -> Any:
    import jax
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_params(policy_config, mesh, rules) -> tuple[Any, Any]:
    """(param ShapeDtypeStructs placed by their logical axes, their NamedShardings); nothing allocated."""
    import flax.linen as nn
    import jax

    from segzero_jax.models.qwen2_5_vl.model import init_params
    from segzero_jax.parallel import logical_shardings

    boxed = jax.eval_shape(lambda r: init_params(policy_config, r), jax.random.PRNGKey(0))
    shardings = logical_shardings(boxed, mesh, rules)
    return _with_sharding(nn.unbox(boxed), shardings), shardings


def abstract_batch(policy_config, mesh, rules, batch_size: int, prompt_len: int, image_size: int) -> tuple[dict, Any]:
    """(the input pipeline's device batch as ShapeDtypeStructs, the host grid int32[B, 3] or None).

    input_ids / attention_mask int32[B, T], pixel_values float32[B * (s/14)^2, 1176], bbox
    float32[B, 4], points float32[B, 2, 2]: rows over the data axes (`act_batch`), as
    `experiments.train.global_batch` places them; image_grid_thw replicated.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    from segzero_jax.parallel import named_sharding
    from segzero_jax.parallel.sharding import replicated

    def rows(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=named_sharding(
            ("act_batch",) + (None,) * (len(shape) - 1), shape, mesh, rules))

    b, t = batch_size, prompt_len
    batch = {"input_ids": rows((b, t), jnp.int32), "attention_mask": rows((b, t), jnp.int32),
             "bbox": rows((b, 4), jnp.float32), "points": rows((b, 2, 2), jnp.float32)}
    if not image_size:
        return batch, None
    v = policy_config.vision
    unit = v.patch_size * v.spatial_merge_size
    if image_size % unit:
        raise CompileError(f"data.image_size={image_size} must be a multiple of {unit}")
    side = image_size // v.patch_size
    image_tokens = (side // v.spatial_merge_size) ** 2
    if image_tokens + 3 > t:
        raise CompileError(f"data.max_prompt_length={t} cannot hold the {image_tokens} image tokens "
                           f"(+3) of a {image_size}^2 image")
    grid = np.array([[1, side, side]] * b, np.int32)
    batch["pixel_values"] = rows((b * side * side, v.patch_dim), jnp.float32)
    batch["image_grid_thw"] = jax.ShapeDtypeStruct(grid.shape, jnp.int32, sharding=replicated(mesh))
    return batch, grid


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    import jax
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) is not None else a.shape
        total += math.prod(shape) * a.dtype.itemsize
    return total


@dataclasses.dataclass
class TrainStepWork:
    """The jitted step, its abstract arguments (state, reference params, batch) and a description."""

    fn: Any
    args: tuple
    desc: dict


def build_train_step(policy_config, settings, tx, byte_table, mesh, rules, *, batch_size: int, prompt_len: int,
                     image_size: int, seed: int = 0) -> TrainStepWork:
    """`make_train_step`'s jitted step with the shardings `experiments.train` gives it, and abstract
    arguments of the given shapes. Lower it under `jax.set_mesh(mesh)` and the logical-axis rules."""
    import jax

    from segzero_jax.rl import trainer as T

    params, p_shardings = abstract_params(policy_config, mesh, rules)
    state_shardings = T.train_state_shardings(params, p_shardings, tx, mesh)
    state = _with_sharding(jax.eval_shape(lambda p: T.init_train_state(p, tx, jax.random.PRNGKey(seed)), params),
                           state_shardings)
    ref = params if settings.uses_reference else None
    batch, grid = abstract_batch(policy_config, mesh, rules, batch_size, prompt_len, image_size)
    settings.num_updates(batch_size)   # names rl.update_batch_size / rl.micro_batch_size when they do not divide
    layouts = T.host_layouts(policy_config, settings, grid)
    fn = T.make_train_step(policy_config, settings, tx, byte_table, layouts, state_shardings=state_shardings,
                           ref_shardings=p_shardings if ref is not None else None,
                           batch_shardings=jax.tree.map(lambda a: a.sharding, batch))
    rows = batch_size * settings.group_size
    desc = {"prompts": batch_size, "group_size": settings.group_size, "rows": rows, "prompt_len": prompt_len,
            "response_len": settings.max_new_tokens, "image_size": image_size,
            "update_batch_size": settings.update_batch_size, "updates_per_step": settings.num_updates(batch_size),
            "micro_batch_size": settings.micro_batch_size, "ppo_epochs": settings.ppo_epochs,
            "reference_policy": ref is not None, "freeze_vision": settings.freeze_vision,
            "decode_layout": settings.decode_layout, "logits_chunk_size": settings.chunk_size,
            "remat": policy_config.remat_policy, "param_dtype": policy_config.param_dtype,
            "dtype": policy_config.dtype, "attention": policy_config.attention_impl,
            "num_params": sum(math.prod(a.shape) for a in jax.tree.leaves(params)),
            "arguments_per_device": {"params": per_device_bytes(state.params),
                                     "optimizer_state": per_device_bytes(state.opt_state),
                                     "reference_params": per_device_bytes(ref),
                                     "batch": per_device_bytes(batch)}}
    return TrainStepWork(fn, (state, ref, batch), desc)


# -- compile and report ------------------------------------------------------------------------

def lower_and_compile(work: TrainStepWork, mesh, rules):
    import flax.linen as nn
    import jax
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(tuple(r) for r in rules)):
        return work.fn.lower(*work.args).compile()


def memory_figures(compiled) -> dict:
    """XLA's per-device memory analysis of a compiled program, in bytes, and the total it needs."""
    mem = compiled.memory_analysis()
    get = lambda name: int(getattr(mem, name, 0) or 0)  # noqa: E731
    row = {"argument_bytes": get("argument_size_in_bytes"), "output_bytes": get("output_size_in_bytes"),
           "alias_bytes": get("alias_size_in_bytes"), "temp_bytes": get("temp_size_in_bytes"),
           "code_bytes": get("generated_code_size_in_bytes")}
    row["peak_bytes"] = (row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]
                         + row["code_bytes"])
    return row


def is_out_of_memory(error: Exception) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text or "exceeds the available" in text


def _advice(row: dict) -> str:
    """What lowers the step's memory, from the row's settings."""
    ways = ["more devices on the fsdp axis (config.mesh.shape)",
            f"a smaller rl.micro_batch_size (now {row['micro_batch_size']})"]
    if row["remat"] != "full":
        ways.append(f"model.remat_policy='full' (now {row['remat']!r})")
    if row["decode_layout"] == "unscanned":
        ways.append("rl.decode_layout='scanned' (the rollout decodes without an unstacked copy of the decoder)")
    if row["reference_policy"]:
        ways.append("rl.kl_coef=0 (no reference policy)")
    return "to lower it: " + ", ".join(ways)


def _arguments(row: dict) -> str:
    parts = row["arguments_per_device"]
    return "arguments per device: " + ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f} GiB" for k, v in parts.items() if v)


def print_table(row: dict, out=None) -> None:
    """The row as a per-device memory table (or, when the compiler ran out of memory, its message)."""
    out = out or sys.stdout
    gib = lambda x: f"{x / GIB:9.2f} GiB"  # noqa: E731
    print(f"GRPO train step, {row['preset']} policy, on {row['topology']} ({row['device_kind']}, {row['devices']} "
          f"devices), mesh {row['mesh']}; compiled in {row['compile_s']:.1f} s", file=out)
    print(f"  {row['prompts']} prompts x {row['group_size']} samples, prompt {row['prompt_len']} + response "
          f"{row['response_len']} tokens, {row['image_size']}^2 images; micro-batch {row['micro_batch_size']}, "
          f"{row['updates_per_step']} update(s) per step, remat {row['remat']}, params {row['param_dtype']}, "
          f"decode {row['decode_layout']}, reference policy {'yes' if row['reference_policy'] else 'no'}", file=out)
    parts = "  (" + ", ".join(f"{k.replace('_', ' ')} {v / GIB:.2f}" for k, v in
                              row["arguments_per_device"].items() if v) + ")"
    if "compiler_error" in row:
        print(f"  the compiler ran out of memory; {_arguments(row)}\n  {row['compiler_error']}", file=out)
        return
    print(f"{'per device':>24}", file=out)
    for key, label in (("argument_bytes", "arguments"), ("output_bytes", "outputs"),
                       ("alias_bytes", "aliased (donated)"), ("temp_bytes", "temporaries"),
                       ("code_bytes", "generated code"), ("peak_bytes", "total")):
        print(f"{label:>24} {gib(row[key])}{parts if key == 'argument_bytes' else ''}", file=out)
    if row["capacity_gib"]:
        used = 100 * row["peak_bytes"] / (row["capacity_gib"] * GIB)
        print(f"{'device memory':>24} {row['capacity_gib']:9.2f} GiB  ({row['capacity_source']}; {used:.0f}% used)  "
              f"fits: {row['fits']}", file=out)
    else:
        print(f"{'device memory':>24} {row['capacity_source']}", file=out)


def compile_train_step(config, devices: list, topology: str = "", num_slices: int = 1,
                       capacity_gib: Optional[float] = None) -> dict:
    """Compiles the config's train step for `devices`; returns the report row (see `compile_only`)."""
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer
    from segzero_jax.parallel import make_mesh
    from segzero_jax.rl.byte_table import byte_table_for_tokenizer

    train = _train_module()
    attention = target_attention(config.model.attention_impl, topology)
    policy_cfg = train.policy_config_from(config).replace(attention_impl=attention)
    settings = train.settings_from_config(config)
    try:
        mesh = make_mesh(tuple(config.mesh.shape), dcn_mesh_shape=config.mesh.dcn_shape, devices=devices)
    except ValueError as e:
        raise CompileError(f"config.mesh.shape={tuple(config.mesh.shape)} over {len(devices)} devices: {e}") from None
    rules = tuple(tuple(r) for r in config.mesh.axis_rules)
    params, _ = abstract_params(policy_cfg, mesh, rules)
    tx = train.optimizer_from_config(config, params)
    d = config.data
    try:
        work = build_train_step(policy_cfg, settings, tx, byte_table_for_tokenizer(QwenTokenizer.default()), mesh,
                                rules, batch_size=d.batch_size, prompt_len=d.max_prompt_length,
                                image_size=d.image_size, seed=config.train.seed)
    except ValueError as e:
        raise CompileError(str(e)) from None
    capacity, source = (capacity_gib, "given") if capacity_gib is not None else device_capacity(devices)
    row = {"work": "grpo_train_step", "topology": topology or "local", "num_slices": num_slices,
           "device_kind": str(getattr(devices[0], "device_kind", "")), "devices": len(devices),
           "mesh": dict(zip(mesh.axis_names, (int(x) for x in mesh.devices.shape))),
           "preset": config.model.policy_preset, **work.desc, "capacity_gib": capacity, "capacity_source": source}
    t0 = time.perf_counter()
    try:
        compiled = lower_and_compile(work, mesh, rules)
    except Exception as e:  # noqa: BLE001  (the TPU compiler refuses a program that does not fit)
        if not is_out_of_memory(e):
            raise
        row.update(compile_s=round(time.perf_counter() - t0, 1), fits=False,
                   compiler_error=_first_lines(str(e), 12))
        return row
    row["compile_s"] = round(time.perf_counter() - t0, 1)
    row.update(memory_figures(compiled))
    row["fits"] = None if capacity is None else row["peak_bytes"] <= capacity * GIB
    return row


def _first_lines(text: str, n: int) -> str:
    return "\n".join(text.strip().splitlines()[:n])


def _train_module():
    """experiments.train: the running `python -m experiments.train` (importing it a second time
    would define its flags twice), else imported."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) == "experiments.train":
        return main
    from experiments import train
    return train


def compile_only(config, topology: str, num_slices: int, capacity_gib: Optional[float] = None) -> int:
    """`experiments.train --compile_only`: compile the config's train step for `topology` ("" = this
    host), print a per-device memory table and one JSON line; 0 when it fits (or the device
    memory is unknown), 1 when it does not, 2 when it cannot be compiled for that target.
    `capacity_gib` replaces the device's memory figure."""
    try:
        devices = target_devices(topology, num_slices)
        row = compile_train_step(config, devices, topology, num_slices, capacity_gib)
    except CompileError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(row)
    print(json.dumps(row), flush=True)
    if row["fits"] is False:
        if "compiler_error" in row:
            need = f"the compiler ran out of device memory ({_arguments(row)}):\n{row['compiler_error']}\n"
        else:
            need = (f"it needs {row['peak_bytes'] / GIB:.2f} GiB per device, {row['capacity_gib']:.2f} GiB "
                    f"available ({row['capacity_source']}; {_arguments(row)}); ")
        print(f"error: the train step does not fit on {row['topology']} ({row['device_kind']}) with mesh "
              f"{row['mesh']}: {need}{_advice(row)}", file=sys.stderr)
        return 1
    return 0
