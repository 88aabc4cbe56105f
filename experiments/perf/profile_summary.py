"""Where the time of a profiled accelerator run goes: GPU kernel time by what it computes.

  python -m experiments.perf.profile_summary --trace=DIR_OR_XPLANE [--hlo=FILE] [--iterations=2]

Reads the kernel table of a `jax.profiler` trace (an `*.xplane.pb`, or the newest one under a
directory, e.g. the `--profile_dir` of `experiments.perf.benchmark_sam2`) with `xprof`
(`pip install xprof`; only this script needs it) and groups the kernels:
  * "matmul" (cuBLAS / cuBLASLt / Triton GEMM and cuDNN convolution kernels), "attention" (cuDNN
    fused attention), "copy" (memcpy / memset);
  * every other kernel is an XLA fusion: the optimised HLO (`--hlo`, default the `*.hlo.txt`
    beside the trace) names the model op it came from (its `op_name` metadata), grouped by the
    last two parts of that path with layer indices and scan / jit wrappers dropped, e.g.
    "mlp/mul" or "attn/add".
Prints milliseconds per iteration and shares, one JSON line (also written to --json_out).
`--calls=REGEX` also lists every launch of the matching kernels in time order with its duration
(e.g. `--calls=sdpa` gives each attention call, where one kernel name hides blocks of very
different cost).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections import defaultdict

from absl import app, flags

from experiments.perf import hlo_census
from experiments.perf.report import emit

FLAGS = flags.FLAGS
flags.DEFINE_string("trace", "", "an .xplane.pb file or a directory holding one (the newest is read)")
flags.DEFINE_string("hlo", "", "optimised HLO text of the profiled program (default: *.hlo.txt beside --trace)")
flags.DEFINE_integer("iterations", 2, "calls the trace holds (times are divided by it)")
flags.DEFINE_integer("top", 25, "groups to print")
flags.DEFINE_string("calls", "", "regex: list each launch of the matching kernels in time order")

_MATMUL = re.compile(r"^(nvjet|cutlass|sm\d+_xmma|ampere_|hopper_|gemm_fusion|triton_gemm)|gemm|xmma_fprop|"
                     r"implicit_gemm|convolve", re.IGNORECASE)
_ATTENTION = re.compile(r"sdpa|fmha|flash_(fprop|bprop)", re.IGNORECASE)
_COPY = re.compile(r"^(memcpy|memset)", re.IGNORECASE)
_WRAPPERS = re.compile(r"^(jit\(.*\)|while|body|cond|eval_jaxpr|checkpoint|remat|rematted_computation|"
                       r"pjit|closed_call|transpose\(jvp.*\)|jvp\(.*\))$")


def op_group(op_name: str) -> str:
    """`jit(f)/Sam2.encode_image/trunk/while/body/eval_jaxpr/segment_6/segment_6/mlp/mul` ->
    `mlp/mul`: the last two parts, without wrappers, layer indices or repeated scopes."""
    parts = []
    for part in op_name.split("/"):
        if _WRAPPERS.match(part):
            continue
        part = re.sub(r"_\d+$", "_*", part)
        if not parts or parts[-1] != part:
            parts.append(part)
    return "/".join(parts[-2:]) if parts else op_name


def kernel_group(kernel: str, op_names: dict[str, str]) -> str:
    """The group of one GPU kernel (see the module docstring)."""
    if _ATTENTION.search(kernel):
        return "attention"
    if _COPY.search(kernel):
        return "copy"
    if _MATMUL.search(kernel):
        return "matmul"
    m = re.match(r"^(.*)_(\d+)$", kernel)     # XLA names kernel "fusion_4" after instruction "fusion.4"
    for name in ([f"{m.group(1)}.{m.group(2)}"] if m else []) + [kernel]:
        if name in op_names:
            return op_group(op_names[name])
    return f"other: {kernel[:60]}"


def summarize(kernels: list[dict], op_names: dict[str, str], iterations: int) -> dict:
    """kernels: [{"kernel_name", "total_duration_us", "occurrences"}] -> the per-group table."""
    if iterations < 1:
        raise ValueError(f"iterations={iterations} must be at least 1")
    groups: dict[str, dict] = defaultdict(lambda: {"ms_per_iteration": 0.0, "launches_per_iteration": 0.0,
                                                   "kernels": set()})
    for k in kernels:
        g = groups[kernel_group(k["kernel_name"], op_names)]
        g["ms_per_iteration"] += k["total_duration_us"] / 1000.0 / iterations
        g["launches_per_iteration"] += k["occurrences"] / iterations
        g["kernels"].add(k["kernel_name"])
    total = sum(g["ms_per_iteration"] for g in groups.values())
    rows = [{"group": name, "ms_per_iteration": round(g["ms_per_iteration"], 3),
             "share": round(g["ms_per_iteration"] / total, 4) if total else 0.0,
             "launches_per_iteration": round(g["launches_per_iteration"], 1), "distinct_kernels": len(g["kernels"])}
            for name, g in groups.items()]
    rows.sort(key=lambda r: -r["ms_per_iteration"])
    return {"kernel_ms_per_iteration": round(total, 3), "groups": rows}


def read_kernels(xplane: str) -> list[dict]:
    """The kernel table of one trace file, through xprof."""
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        raise app.UsageError("reading a trace needs xprof: pip install xprof") from None
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "kernel_stats", {})
    table = json.loads(data)
    cols = [c["id"] for c in table["cols"]]
    rows = [dict(zip(cols, [cell.get("v") for cell in row["c"]])) for row in table["rows"]]
    return [{"kernel_name": r["kernel_name"], "total_duration_us": float(r["total_duration_us"]),
             "occurrences": float(r["occurrences"])} for r in rows]


def read_launches(xplane: str) -> list[dict]:
    """Every kernel launch on the GPU's compute streams, in time order: [{"kernel_name", "us"}]."""
    try:
        from xprof.convert import raw_to_tool_data
    except ImportError:
        raise app.UsageError("reading a trace needs xprof: pip install xprof") from None
    data, _ = raw_to_tool_data.xspace_to_tool_data([xplane], "trace_viewer", {})
    events = json.loads(data)["traceEvents"]
    return stream_launches(events)


def stream_launches(events: list[dict]) -> list[dict]:
    """The kernel launches of a trace-viewer event list: complete events on the "Stream #..."
    threads of "/device:GPU:*" processes (not the XLA op / module lines drawn over them)."""
    meta = [e for e in events if e.get("ph") == "M"]
    gpus = {e["pid"] for e in meta if e.get("name") == "process_name"
            and str(e.get("args", {}).get("name", "")).startswith("/device:GPU")}
    streams = {(e["pid"], e["tid"]) for e in meta if e.get("name") == "thread_name" and e.get("pid") in gpus
               and str(e.get("args", {}).get("name", "")).startswith("Stream #")}
    launches = sorted((e for e in events if e.get("ph") == "X" and (e.get("pid"), e.get("tid")) in streams),
                      key=lambda e: e["ts"])
    return [{"kernel_name": e["name"], "us": float(e["dur"])} for e in launches]


def find_files(trace: str, hlo: str = "") -> tuple[str, str]:
    """(the newest .xplane.pb at or under `trace`, the HLO text: `hlo`, else the first
    *.hlo.txt in the trace's folder or up to three folders above it)."""
    if os.path.isfile(trace):
        xplane, base = trace, os.path.dirname(trace)
    else:
        found = sorted(glob.glob(os.path.join(trace, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
        if not found:
            raise app.UsageError(f"--trace={trace!r}: no .xplane.pb file there")
        xplane, base = found[-1], trace
    # --profile_dir keeps NAME.hlo.txt at its root, the trace in plugins/profile/RUN/ below it
    base = os.path.abspath(base)
    for _ in range(4):
        if hlo:
            break
        hlo = next(iter(sorted(glob.glob(os.path.join(base, "*.hlo.txt")))), "")
        base = os.path.dirname(base)
    return xplane, hlo


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.trace:
        raise app.UsageError("--trace is required")
    xplane, hlo = find_files(FLAGS.trace, FLAGS.hlo)
    op_names = {}
    if hlo:
        with open(hlo) as f:
            op_names = hlo_census.op_names(f.read())
    else:
        print("no *.hlo.txt beside the trace or above it (--hlo=FILE): fusions are grouped by kernel name")
    result = summarize(read_kernels(xplane), op_names, FLAGS.iterations)
    result.update(trace=xplane, hlo=hlo)
    if not result["groups"]:
        raise app.UsageError(f"{xplane}: the trace holds no GPU kernels")
    print(f"{'group':44s} {'ms/iter':>9s} {'share':>7s} {'launches':>9s}")
    for r in result["groups"][:FLAGS.top]:
        print(f"{r['group'][:44]:44s} {r['ms_per_iteration']:9.3f} {r['share'] * 100:6.1f}% "
              f"{r['launches_per_iteration']:9.1f}")
    print(f"{'kernels in all':44s} {result['kernel_ms_per_iteration']:9.3f}")
    if FLAGS.calls:
        pattern = re.compile(FLAGS.calls)
        calls = [c for c in read_launches(xplane) if pattern.search(c["kernel_name"])]
        result["calls_us"] = [round(c["us"], 1) for c in calls]
        print(f"{len(calls)} launches matching {FLAGS.calls!r} (us, in order, all iterations):")
        print(" ".join(f"{c['us']:.1f}" for c in calls))
    emit(result)


if __name__ == "__main__":
    app.run(main)
