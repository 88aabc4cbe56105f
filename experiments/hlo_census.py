"""Kernel census of an optimized XLA:GPU program: every kernel it launches (fusions, cuBLAS and
cuDNN calls, copies), how often (loop trip counts multiplied in), the bytes it reads and
writes and the FLOPs of its matmuls and attention, grouped by kind, with a roofline time per
kernel: the larger of its bytes at the card's memory bandwidth and its FLOPs at the card's
matmul peak.

  python -m experiments.hlo_census --hlo=PROGRAM.hlo.txt [--bandwidth_gbps=3350 --peak_tflops=989]
  python -m experiments.aot_compile --work=sam2 --topology=gpu:h100 --census      (no GPU needed)

The input is the text of a compiled program (`jax.jit(f).lower(...).compile().as_text()`, or
the `NAME.hlo.txt` that `--profile_dir` keeps). What it tells without a GPU: which passes over
memory a change adds or removes (a transpose that appeared, a bias or activation that cuBLAS now
applies in its epilogue, a loop's per-iteration kernels) and a lower bound on the time. What it
cannot tell: how close each kernel gets to its bound; small-tile attention and batched matmuls
land well above it, so time on the card stays a measurement (`experiments.benchmark_sam2`).

Bytes count each operand and result once at full size, except that an operand a fusion only
slices (a scanned layer's weights or saved activations) counts the slices, an in-place update
(dynamic-update-slice, scatter: a KV-cache write) reads and writes only the piece, and cuBLAS
workspaces are left out. FLOPs are those of dots (cuBLAS calls and GEMM fusions) and cuDNN attention. A loop's
condition counts one launch more than its trips; a conditional counts every branch once (an
upper bound).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Optional

from absl import app, flags

# An array type: element type (pred, s4, u8, bf16, f32, f8e4m3fn, c64, ...) and dimensions.
_ARRAY = re.compile(r"\b(pred|token|[subfc]\d+[a-z0-9]*|bf16)\[([\d,]*)\]")
_COMPUTATION = re.compile(r"^(ENTRY )?%(\S+) \(.*?\{\n(.*?)^\}", re.M | re.S)
_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9\-]*)\((.*)$")
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


def _types(body: str) -> dict[str, str]:
    """Instruction name -> its type text, for one computation's body."""
    out = {}
    for line in body.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _dot_flops(line: str, types: dict[str, str], out_type: str) -> int:
    """2 x output elements x contracted size of an HLO `dot` line (batch dims are in the output)."""
    m = _INSTRUCTION.match(line)
    operands = re.findall(r"%([\w.\-]+)", m.group(4).split("), ")[0]) if m else []
    lhs = _dims(types.get(operands[0], "")) if operands else []
    dims = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line)
    k = math.prod(lhs[int(d)] for d in dims.group(1).split(",") if d) if dims and lhs else 0
    return 2 * math.prod(_dims(out_type)) * k


def _fusion_flops(body: str) -> int:
    """FLOPs of the dots inside a fused computation (Triton / cuDNN GEMM fusions)."""
    types, total = _types(body), 0
    for line in body.splitlines():
        m = _INSTRUCTION.match(line)
        if m and m.group(3) == "dot":
            total += _dot_flops(line, types, m.group(2))
    return total


def _operand_reads(body: str, n_operands: int) -> list[Optional[int]]:
    """Per fusion operand: the bytes the fused computation reads of it when it only slices it
    (dynamic-slice / slice: the slices' sizes; the target of a dynamic-update-slice: nothing,
    the buffer is updated in place), else None (read whole)."""
    params, uses, origin = {}, collections.defaultdict(list), {}
    for line in body.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, type_text, op, rest = m.groups()
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        if op == "parameter":
            params[int(re.match(r"\s*(\d+)", rest).group(1))] = name
            origin[name] = name
            continue
        if op == "bitcast" and operands and operands[0] in origin:   # a view of the parameter
            origin[name] = origin[operands[0]]
            continue
        for position, operand in enumerate(operands):
            if operand in origin:
                uses[origin[operand]].append((op, position, type_text))
    reads: list[Optional[int]] = []
    for i in range(n_operands):
        found = uses.get(params.get(i, ""), [])
        if found and all(op in ("dynamic-slice", "slice") and pos == 0 for op, pos, _ in found):
            reads.append(sum(array_bytes(t) for _, _, t in found))
        elif found and all(op in ("dynamic-update-slice", "scatter") and pos == 0 for op, pos, _ in found):
            reads.append(0)
        else:
            reads.append(None)
    return reads


def _update_bytes(body: str) -> int:
    """Bytes of the pieces a fusion writes in place (dynamic-update-slice's update, scatter's
    updates)."""
    types, total = _types(body), 0
    for line in body.splitlines():
        m = _INSTRUCTION.match(line)
        if m and m.group(3) in ("dynamic-update-slice", "scatter"):
            operands = re.findall(r"%([\w.\-]+)", m.group(4).split("), ")[0])
            piece = 1 if m.group(3) == "dynamic-update-slice" else 2
            if len(operands) > piece:
                total += array_bytes(types.get(operands[piece], ""))
    return total


def _kind(op: str, target: str, body: str) -> str:
    if "fmha" in target:
        return "attention (cuDNN)"
    if "matmul" in target or target.startswith("__cublas"):
        return "matmul (cuBLAS)"
    if "$conv" in target:
        return "convolution (cuDNN)"
    if op in ("dynamic-update-slice", "scatter"):
        return "in-place update"
    if op == "fusion":
        if " dot(" in body:
            return "matmul (fusion)"
        if "dynamic-update-slice(" in body or " scatter(" in body:
            return "in-place update"
        if " erf(" in body or " tanh(" in body:
            return "activation"
        if " reduce(" in body:
            return "reduction (norms, softmax)"
        if " transpose(" in body:
            return "transpose"
        if " broadcast(" in body and " add(" not in body and " multiply(" not in body:
            return "broadcast"
        if "dynamic-slice(" in body or "dynamic-update-slice(" in body:
            return "layer slicing"
        return "elementwise / other fusion"
    return op


def census(hlo_text: str) -> list[Kernel]:
    """Every kernel launch of the compiled program `hlo_text`, loops unrolled by trip count."""
    computations = {m.group(2): (bool(m.group(1)), m.group(3)) for m in _COMPUTATION.finditer(hlo_text)}
    entries = [name for name, (is_entry, _) in computations.items() if is_entry]
    if len(entries) != 1:
        raise ValueError(f"expected one ENTRY computation in the HLO text, found {len(entries)}")
    kernels: list[Kernel] = []

    def walk(name: str, launches: int, loop: str) -> None:
        types: dict[str, str] = {}
        for line in computations[name][1].splitlines():
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            inst, type_text, op, rest = m.groups()
            types[inst] = type_text
            if op in _NO_KERNEL:
                continue
            if op == "while":
                body, cond = re.search(r"body=%([\w.\-]+)", line), re.search(r"condition=%([\w.\-]+)", line)
                if not body or not cond or body.group(1) not in computations or cond.group(1) not in computations:
                    raise ValueError(f"while loop %{inst} in %{name}: its body or condition is missing")
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', line)
                n = int(trips.group(1)) if trips else 1
                walk(body.group(1), launches * n, body.group(1))
                walk(cond.group(1), launches * (n + 1), body.group(1))   # checked once more to exit
                continue
            if op in ("call", "conditional", "async-start"):
                # A conditional's branches are all counted, once each: an upper bound.
                callees = re.findall(r"%([\w.\-]+)", " ".join(re.findall(
                    r"(?:to_apply|calls|true_computation|false_computation)=%[\w.\-]+"
                    r"|branch_computations=\{[^}]*\}", line)))
                for callee in callees:
                    if callee not in computations:
                        raise ValueError(f"%{inst} in %{name} calls %{callee}, which is not in the HLO text")
                    walk(callee, launches, loop)
                continue
            operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
            called = re.search(r"calls=%([\w.\-]+)", line)
            custom = re.search(r'custom_call_target="([^"]+)"', line)
            target = custom.group(1) if custom else called.group(1) if called else op
            body = computations.get(called.group(1), (False, ""))[1] if called else ""
            out_bytes = array_bytes(type_text)
            kind = _kind(op, target, body)
            if op == "fusion":   # an operand the fusion only slices is read only in part
                reads = _operand_reads(body, len(operands))
                in_bytes = sum(array_bytes(types.get(o, "")) if r is None else r for o, r in zip(operands, reads))
            elif op in ("dynamic-slice", "slice"):
                in_bytes = out_bytes
            else:
                in_bytes = sum(array_bytes(types.get(o, "")) for o in operands)
            if kind == "in-place update":   # writes the piece, not the whole buffer
                piece = 1 if op == "dynamic-update-slice" else 2
                out_bytes = (_update_bytes(body) if op == "fusion"
                             else array_bytes(types.get(operands[piece], "")) if len(operands) > piece else out_bytes)
                if op != "fusion":
                    in_bytes = out_bytes
            flops = 0
            if kind == "matmul (cuBLAS)" and operands:
                lhs = _dims(types.get(operands[0], ""))
                contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', line)
                dims = [int(d) for d in re.findall(r"\d+", contracting.group(1))] if contracting else []
                k = math.prod(lhs[d] for d in dims) if dims and lhs else (lhs[-1] if lhs else 0)
                flops = 2 * math.prod(_dims(type_text)) * k
            elif kind == "matmul (fusion)":
                flops = _fusion_flops(body)
            elif kind == "attention (cuDNN)" and len(operands) >= 2:
                q, kv = _dims(types.get(operands[0], "")), _dims(types.get(operands[1], ""))
                if len(q) == 4 and len(kv) == 4:   # [B, T, N, H] and [B, S, N, H]
                    flops = 4 * q[0] * q[1] * q[2] * q[3] * kv[1]
            epilogue = re.search(r'"epilogue":"([A-Z_]+)"', line)
            op_name = re.search(r'op_name="([^"]+)"', line)
            kernels.append(Kernel(inst, kind, target, loop, launches, in_bytes + out_bytes, flops,
                                  epilogue.group(1) if epilogue else "", op_name.group(1) if op_name else ""))

    walk(entries[0], 1, "entry")
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
    """The command line's flags (not defined on import: `experiments.aot_compile` uses this module)."""
    flags.DEFINE_string("hlo", "", "text of a compiled XLA:GPU program")
    flags.DEFINE_float("bandwidth_gbps", 3350.0, "memory bandwidth for the roofline (H100 SXM: 3350)")
    flags.DEFINE_float("peak_tflops", 989.0, "dense matmul peak for the roofline (H100 SXM bf16: 989)")
    flags.DEFINE_integer("top", 20, "also list the largest kernels")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from experiments.report import emit
    if not FLAGS.hlo:
        raise app.UsageError("--hlo=FILE is required")
    if FLAGS.bandwidth_gbps <= 0 or FLAGS.peak_tflops <= 0:
        raise app.UsageError("--bandwidth_gbps and --peak_tflops must be positive")
    try:
        with open(FLAGS.hlo) as f:
            text = f.read()
        kernels = census(text)
    except (OSError, ValueError) as e:
        raise app.UsageError(f"--hlo={FLAGS.hlo!r}: {e}") from None
    summary = summarize(kernels, FLAGS.bandwidth_gbps, FLAGS.peak_tflops)
    print_summary(summary, kernels, FLAGS.top)
    emit(summary)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
