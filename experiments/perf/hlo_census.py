"""Kernel census of an optimized XLA:GPU program: every kernel it launches (fusions, cuBLAS and
cuDNN calls, copies), how often (loop trip counts multiplied in), the bytes it reads and
writes and the FLOPs of its matmuls and attention, grouped by kind, with a roofline time per
kernel: the larger of its bytes at the card's memory bandwidth and its FLOPs at the card's
matmul peak.

  python -m experiments.perf.hlo_census --hlo=PROGRAM.hlo.txt [--bandwidth_gbps=3352 --peak_tflops=989]
  python -m experiments.perf.aot_compile --work=sam2 --topology=gpu:h100 --census      (no GPU needed)

The input is the text of a compiled program (`jax.jit(f).lower(...).compile().as_text()`, or
the `NAME.hlo.txt` that `--profile_dir` keeps). What it tells without a GPU: which passes over
memory a change adds or removes (a transpose that appeared, a bias or activation that cuBLAS now
applies in its epilogue, a loop's per-iteration kernels) and a lower bound on the time. What it
cannot tell: how close each kernel gets to its bound; small-tile attention and batched matmuls
land well above it, so time on the card stays a measurement (`experiments.perf.benchmark_sam2`).

Bytes count each operand and result once at full size, except that an operand a fusion only
slices (a scanned layer's weights or saved activations) counts the slices, an in-place update
(dynamic-update-slice, scatter: a KV-cache write) reads and writes only the piece, and cuBLAS
workspaces are left out. FLOPs are those of dots (cuBLAS calls and GEMM fusions) and cuDNN attention. A loop's
condition counts one launch more than its trips. A conditional counts its costliest branch by
roofline time (an upper bound: one branch runs per execution), plus one "conditional" entry for
the branch index that XLA:GPU copies to the host, which waits for the stream to drain before it
launches the branch's kernels.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Optional

from absl import app, flags

from experiments.perf.gpu_targets import card_figures

# An array type: element type (pred, s4, u8, bf16, f32, f8e4m3fn, c64, ...) and dimensions.
_ARRAY = re.compile(r"\b(pred|token|[subfc]\d+[a-z0-9]*|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) \(.*?\{\n(.*?)^\}", re.M | re.S)
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
_OP_NAME = re.compile(r'op_name="([^"]+)"')
# Instructions that launch nothing: views, tuples, constants, the ends of asynchronous pairs,
# control flow (walked into).
_NO_KERNEL = {"get-tuple-element", "bitcast", "parameter", "constant", "tuple", "after-all",
              "partition-id", "replica-id", "opt-barrier", "add-dependency", "async-done",
              "async-update", "copy-done"}


def element_bits(dtype: str) -> int:
    """Bits per element of an HLO element type: pred 8, bf16 16, s4 4, f8e4m3fn 8, c64 64..."""
    if dtype == "pred":
        return 8
    if dtype == "token":
        return 0
    return int(re.match(r"[a-z]+(\d+)", dtype).group(1))


def array_bytes(type_text: str, workspace: bool = False) -> int:
    """Bytes of every array in an HLO type (a tuple sums its elements); int8/uint8 arrays, the
    cuBLAS / cuDNN scratch outputs, are left out unless `workspace`."""
    bits = 0
    for dtype, dims in _ARRAY.findall(type_text):
        if dtype in ("s8", "u8") and not workspace:
            continue
        bits += element_bits(dtype) * math.prod(int(d) for d in dims.split(",") if d)
    return (bits + 7) // 8


def _dims(type_text: str) -> list[int]:
    m = _ARRAY.search(type_text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


@dataclasses.dataclass
class Kernel:
    name: str           # the instruction
    kind: str           # the census group
    target: str         # fused computation or custom-call target
    loop: str           # the while body it runs in ("entry" outside loops)
    launches: int       # per program run (trip counts multiplied in)
    bytes: int          # read + written per launch
    flops: int          # matmul / attention FLOPs per launch
    epilogue: str       # cuBLAS epilogue (BIAS, BIAS_GELU, ...) where one is fused
    op_name: str        # the JAX source op (metadata)


@dataclasses.dataclass(frozen=True)
class _Instruction:
    name: str
    type: str           # its HLO type text
    op: str
    operands: tuple[str, ...]
    line: str


def _parse(body: str) -> list[_Instruction]:
    """One computation's instructions, in order."""
    out = []
    for line in body.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            name, type_text, op, rest = m.groups()
            out.append(_Instruction(name, type_text, op, tuple(re.findall(r"%([\w.\-]+)", rest.split("), ")[0])),
                                    line))
    return out


def op_names(hlo_text: str) -> dict[str, str]:
    """Instruction name -> its `op_name` metadata (the JAX op it came from), for every
    instruction of a program's text that carries one."""
    found = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        op_name = _OP_NAME.search(line) if m else None
        if op_name:
            found[m.group(1)] = op_name.group(1)
    return found


def _matmul_flops(lhs: list[int], contracting: list[int], out: list[int]) -> int:
    """2 x output elements x contracted size (batch dims are in the output)."""
    return 2 * math.prod(out) * math.prod(lhs[d] for d in contracting) if lhs else 0


# The operand a write-in-place op writes into its buffer: dynamic-update-slice's update,
# scatter's updates.
_PIECE = {"dynamic-update-slice": 1, "scatter": 2}


def _fusion_flops(body: list[_Instruction]) -> int:
    """FLOPs of the dots inside a fused computation (Triton / cuDNN GEMM fusions)."""
    types, total = {i.name: i.type for i in body}, 0
    for i in body:
        if i.op == "dot":
            dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", i.line)
            contracting = [int(d) for d in dims.group(1).split(",") if d] if dims else []
            total += _matmul_flops(_dims(types.get(i.operands[0], "")), contracting, _dims(i.type))
    return total


def _operand_reads(body: list[_Instruction], n_operands: int) -> list[Optional[int]]:
    """Per fusion operand: the bytes the fused computation reads of it when it only slices it
    (dynamic-slice / slice / gather, an embedding lookup: the pieces' sizes; the buffer a
    write-in-place op updates: nothing), else None (read whole). Bitcasts of a parameter are
    views of it."""
    params, uses, origin = {}, collections.defaultdict(list), {}
    for i in body:
        if i.op == "parameter":
            params[int(re.search(r"parameter\((\d+)\)", i.line).group(1))] = i.name
            origin[i.name] = i.name
        elif i.op == "bitcast" and i.operands and i.operands[0] in origin:
            origin[i.name] = origin[i.operands[0]]
        else:
            for position, operand in enumerate(i.operands):
                if operand in origin:
                    uses[origin[operand]].append((i.op, position, i.type))
    reads: list[Optional[int]] = []
    for n in range(n_operands):
        found = uses.get(params.get(n, ""), [])
        if found and all(op in ("dynamic-slice", "slice", "gather") and pos == 0 for op, pos, _ in found):
            reads.append(sum(array_bytes(t) for _, _, t in found))
        elif found and all(op in _PIECE and pos == 0 for op, pos, _ in found):
            reads.append(0)
        else:
            reads.append(None)
    return reads


def _update_bytes(body: list[_Instruction]) -> int:
    """Bytes of the pieces a fusion writes in place."""
    types = {i.name: i.type for i in body}
    return sum(array_bytes(types.get(i.operands[_PIECE[i.op]], "")) for i in body
               if i.op in _PIECE and len(i.operands) > _PIECE[i.op])


def _kind(op: str, target: str, body: list[_Instruction]) -> str:
    if "fmha" in target:
        return "attention (cuDNN)"
    if "matmul" in target or target.startswith("__cublas"):
        return "matmul (cuBLAS)"
    if "$conv" in target:
        return "convolution (cuDNN)"
    if op in _PIECE:
        return "in-place update"
    if op != "fusion":
        return op
    ops = {i.op for i in body}
    if "dot" in ops:
        return "matmul (fusion)"
    if ops & set(_PIECE):
        return "in-place update"
    if ops & {"erf", "tanh"}:
        return "activation"
    if "reduce" in ops:
        return "reduction (norms, softmax)"
    if "transpose" in ops:
        return "transpose"
    if "broadcast" in ops and not ops & {"add", "multiply"}:
        return "broadcast"
    if "dynamic-slice" in ops:
        return "layer slicing"
    return "elementwise / other fusion"


def census(hlo_text: str, bandwidth_gbps: Optional[float] = None,
           peak_tflops: Optional[float] = None) -> list[Kernel]:
    """Every kernel launch of the compiled program `hlo_text`, loops unrolled by trip count.
    The card's figures (default: the H100's) pick a conditional's costliest branch."""
    if bandwidth_gbps is None or peak_tflops is None:
        _, _, bandwidth_gbps, peak_tflops = card_figures("h100")
    bodies, entries = {}, []
    for m in _COMPUTATION.finditer(hlo_text):
        bodies[m.group(2)] = _parse(m.group(3))
        if m.group(1):
            entries.append(m.group(2))
    if len(entries) != 1:
        raise ValueError(f"expected one ENTRY computation in the HLO text, found {len(entries)}")
    kernels: list[Kernel] = []
    cost = lambda ks: sum(roofline_seconds(k, bandwidth_gbps, peak_tflops) * k.launches for k in ks)

    def walk(name: str, launches: int, loop: str, out: list[Kernel]) -> None:
        types: dict[str, str] = {}
        for i in bodies[name]:
            types[i.name] = i.type
            if i.op in _NO_KERNEL:
                continue
            if i.op == "while":
                body, cond = re.search(r"body=%([\w.\-]+)", i.line), re.search(r"condition=%([\w.\-]+)", i.line)
                if not body or not cond or body.group(1) not in bodies or cond.group(1) not in bodies:
                    raise ValueError(f"while loop %{i.name} in %{name}: its body or condition is missing")
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', i.line)
                n = int(trips.group(1)) if trips else 1
                walk(body.group(1), launches * n, body.group(1), out)
                walk(cond.group(1), launches * (n + 1), body.group(1), out)   # checked once more to exit
                continue
            if i.op in ("call", "conditional", "async-start"):
                callees = re.findall(r"%([\w.\-]+)", " ".join(re.findall(
                    r"(?:to_apply|calls|true_computation|false_computation)=%[\w.\-]+"
                    r"|branch_computations=\{[^}]*\}", i.line)))
                branches = []
                for callee in callees:
                    if callee not in bodies:
                        raise ValueError(f"%{i.name} in %{name} calls %{callee}, which is not in the HLO text")
                    branches.append([])
                    walk(callee, launches, loop, branches[-1])
                if i.op != "conditional":
                    out.extend(k for branch in branches for k in branch)
                    continue
                op_name = _OP_NAME.search(i.line)
                out.append(Kernel(i.name, "conditional (branch index to host)", "conditional", loop, launches,
                                  array_bytes(types.get(i.operands[0], "")) if i.operands else 0, 0, "",
                                  op_name.group(1) if op_name else ""))
                out.extend(max(branches, key=cost, default=[]))
                continue
            called = re.search(r"calls=%([\w.\-]+)", i.line)
            custom = re.search(r'custom_call_target="([^"]+)"', i.line)
            target = custom.group(1) if custom else called.group(1) if called else i.op
            body = bodies.get(called.group(1), []) if called else []
            kind = _kind(i.op, target, body)
            operand_bytes = [array_bytes(types.get(o, "")) for o in i.operands]
            out_bytes = array_bytes(i.type)
            if i.op == "fusion":   # an operand the fusion only slices is read only in part
                reads = _operand_reads(body, len(i.operands))
                in_bytes = sum(b if r is None else r for b, r in zip(operand_bytes, reads))
                if kind == "in-place update":
                    out_bytes = _update_bytes(body)
            elif i.op in ("dynamic-slice", "slice"):
                in_bytes = out_bytes
            elif i.op in _PIECE:   # reads and writes the piece, not the whole buffer
                in_bytes = out_bytes = operand_bytes[_PIECE[i.op]]
            else:
                in_bytes = sum(operand_bytes)
            flops = 0
            if kind == "matmul (cuBLAS)" and i.operands:
                lhs = _dims(types.get(i.operands[0], ""))
                dims = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', i.line)
                contracting = [int(d) for d in re.findall(r"\d+", dims.group(1))] if dims else [len(lhs) - 1]
                flops = _matmul_flops(lhs, contracting, _dims(i.type))
            elif kind == "matmul (fusion)":
                flops = _fusion_flops(body)
            elif kind == "attention (cuDNN)" and len(i.operands) >= 2:
                q, kv = _dims(types.get(i.operands[0], "")), _dims(types.get(i.operands[1], ""))
                if len(q) == 4 and len(kv) == 4:   # [B, T, N, H] and [B, S, N, H]
                    flops = 4 * q[0] * q[1] * q[2] * q[3] * kv[1]
            epilogue = re.search(r'"epilogue":"([A-Z_]+)"', i.line)
            op_name = _OP_NAME.search(i.line)
            out.append(Kernel(i.name, kind, target, loop, launches, in_bytes + out_bytes, flops,
                              epilogue.group(1) if epilogue else "", op_name.group(1) if op_name else ""))

    walk(entries[0], 1, "entry", kernels)
    return kernels


def roofline_seconds(kernel: Kernel, bandwidth_gbps: float, peak_tflops: float) -> float:
    """One launch's lower bound: its bytes at full bandwidth or its FLOPs at peak, the larger."""
    return max(kernel.bytes / (bandwidth_gbps * 1e9), kernel.flops / (peak_tflops * 1e12))


def summarize(kernels: list[Kernel], bandwidth_gbps: float, peak_tflops: float) -> dict:
    """Totals and per-kind rows (launches, GB, TFLOP, roofline ms), largest time first."""
    if bandwidth_gbps <= 0 or peak_tflops <= 0:
        raise ValueError(f"bandwidth ({bandwidth_gbps} GB/s) and peak ({peak_tflops} TFLOP/s) must be positive")
    groups: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0])
    for k in kernels:
        g = groups[k.kind]
        g[0] += k.launches
        g[1] += k.bytes * k.launches / 1e9
        g[2] += k.flops * k.launches / 1e12
        g[3] += roofline_seconds(k, bandwidth_gbps, peak_tflops) * k.launches * 1e3
    sig = lambda x: float(f"{x:.5g}")   # five significant digits, small programs included
    rows = [{"kind": kind, "launches": int(n), "gb": sig(gb), "tflop": sig(tf), "roofline_ms": sig(ms)}
            for kind, (n, gb, tf, ms) in sorted(groups.items(), key=lambda kv: -kv[1][3])]
    epilogues = collections.Counter()
    for k in kernels:
        if k.epilogue:
            epilogues[k.epilogue] += k.launches
    totals = [sum(g[i] for g in groups.values()) for i in (1, 2, 3)]
    return {"launches": sum(k.launches for k in kernels),
            "gb": sig(totals[0]), "tflop": sig(totals[1]), "roofline_ms": sig(totals[2]),
            "bandwidth_gbps": bandwidth_gbps, "peak_tflops": peak_tflops,
            "cublas_epilogues": dict(epilogues), "kinds": rows}


def print_summary(summary: dict, kernels: Optional[list[Kernel]] = None, top: int = 0) -> None:
    """The summary's table; with `kernels`, also the `top` kernels by roofline time."""
    bandwidth_gbps, peak_tflops = summary["bandwidth_gbps"], summary["peak_tflops"]
    print(f"{summary['launches']} kernel launches, {summary['gb']:.4g} GB moved, {summary['tflop']:.4g} TFLOP; "
          f"roofline {summary['roofline_ms']:.4g} ms at {summary['bandwidth_gbps']:g} GB/s and "
          f"{summary['peak_tflops']:g} TFLOP/s")
    print(f"{'kind':30s} {'launches':>9s} {'GB':>9s} {'TFLOP':>8s} {'roofline ms':>12s}")
    for r in summary["kinds"]:
        print(f"{r['kind']:30s} {r['launches']:9d} {r['gb']:9.4g} {r['tflop']:8.4g} {r['roofline_ms']:12.4g}")
    if summary["cublas_epilogues"]:
        print("cuBLAS epilogues (launches): " + ", ".join(f"{k} {v}" for k, v in sorted(summary["cublas_epilogues"].items())))
    if kernels and top:
        print(f"\nlargest {top} kernels by roofline time (all launches):")
        ranked = sorted(kernels, key=lambda k: -roofline_seconds(k, bandwidth_gbps, peak_tflops) * k.launches)
        for k in ranked[:top]:
            ms = roofline_seconds(k, bandwidth_gbps, peak_tflops) * k.launches * 1e3
            print(f"{ms:9.4g} ms  x{k.launches:<4d} {k.kind:26s} {k.epilogue:10s} {k.bytes / 1e6:9.4g} MB  {k.op_name[-70:]}")


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """The command line's flags (not defined on import: `experiments.perf.aot_compile` uses this module)."""
    flags.DEFINE_string("hlo", "", "text of a compiled XLA:GPU program")
    _, _, bandwidth, peak = card_figures("h100")
    flags.DEFINE_float("bandwidth_gbps", bandwidth, "memory bandwidth for the roofline (default: the H100's)")
    flags.DEFINE_float("peak_tflops", peak, "dense matmul peak for the roofline (default: the H100's bf16)")
    flags.DEFINE_integer("top", 20, "also list the largest kernels")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.perf.report import emit
    if not FLAGS.hlo:
        raise app.UsageError("--hlo=FILE is required")
    if FLAGS.bandwidth_gbps <= 0 or FLAGS.peak_tflops <= 0:
        raise app.UsageError("--bandwidth_gbps and --peak_tflops must be positive")
    try:
        with open(FLAGS.hlo) as f:
            text = f.read()
        kernels = census(text, FLAGS.bandwidth_gbps, FLAGS.peak_tflops)
    except (OSError, ValueError) as e:
        raise app.UsageError(f"--hlo={FLAGS.hlo!r}: {e}") from None
    summary = summarize(kernels, FLAGS.bandwidth_gbps, FLAGS.peak_tflops)
    print_summary(summary, kernels, FLAGS.top)
    emit(summary)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
