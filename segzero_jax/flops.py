"""Matmul and convolution FLOPs of a traced function, for throughput and MFU figures.

`count_flops(fn, *args)` traces `fn` to a jaxpr (shapes only, nothing runs) and adds up
  * `dot_general`: 2 x (output elements) x (contracted size);
  * `conv_general_dilated`: 2 x the multiply-adds that touch an input element (taps over the
    padding or the holes of a transposed convolution's dilated input are not work);
walking into every sub-jaxpr (jit, remat, custom_vjp/jvp, cond branches), multiplying a `scan`
body by its length (XLA's own cost analysis counts a scanned layer stack once) and a
`shard_map` body (written for one shard) by the number of shards. Element-wise work (norms,
softmax, activations) is not counted: the figure is the numerator of FLOP utilisation. A
gradient's jaxpr holds the backward's matmuls and the recomputation of rematerialised blocks,
so `count_flops(grad_fn)` counts what the hardware executes (model FLOPs, as MFU is usually
quoted, leave the recomputation out: count the function without remat).

Fused attention kernels (cuDNN, the Pallas TPU kernel) are opaque calls: count a function
built with the XLA attention path (`attention_implementation="xla"`) - the same math.
A `while` loop's trip count is unknown at trace time: its body is counted once.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Callable

import jax


def count_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
    """Matmul + convolution FLOPs of one call of `fn(*args, **kwargs)` (arrays or ShapeDtypeStructs)."""
    return sum(flops_by_operand_dtypes(fn, *args, **kwargs).values())


def flops_by_operand_dtypes(fn: Callable[..., Any], *args, **kwargs) -> dict[tuple[str, str], int]:
    """`count_flops` split by each matmul's (lhs, rhs) operand dtypes: a bfloat16 model with FLOPs
    under float32 operands runs those at float32 speed on an accelerator."""
    return dict(jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr))


def jaxpr_flops(jaxpr) -> Counter:
    """FLOPs of a jaxpr by (lhs dtype, rhs dtype)."""
    total: Counter = Counter()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in ("dot_general", "conv_general_dilated"):
            dtypes = (str(eqn.invars[0].aval.dtype), str(eqn.invars[1].aval.dtype))
            total[dtypes] += _dot_flops(eqn) if name == "dot_general" else _conv_flops(eqn)
        elif name == "cond":   # one branch runs: count the most expensive
            total.update(max((jaxpr_flops(_as_jaxpr(b)) for b in eqn.params["branches"]),
                             key=lambda c: sum(c.values())))
        else:
            repeats = _repeats(eqn)
            for p in eqn.params.values():
                if _is_jaxpr(p):
                    total.update({k: v * repeats for k, v in jaxpr_flops(_as_jaxpr(p)).items()})
    return total


def _repeats(eqn) -> int:
    """How many times a sub-jaxpr runs per call: a scan's length, a shard_map's shard count."""
    if eqn.primitive.name == "scan":
        return eqn.params["length"]
    if eqn.primitive.name == "shard_map":
        p = eqn.params
        axes = p.get("newly_manual_axes") or p.get("manual_axes") or p.get("axis_names") or p["mesh"].axis_names
        return math.prod(dict(p["mesh"].shape)[a] for a in axes)
    return 1


def _dot_flops(eqn) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    out = eqn.outvars[0].aval.shape
    return 2 * math.prod(out) * math.prod(lhs[d] for d in lhs_contract)


def _conv_flops(eqn) -> int:
    lhs = eqn.invars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    p, dims = eqn.params, eqn.params["dimension_numbers"]
    taps = 1
    for d, (ld, rd, od) in enumerate(zip(dims.lhs_spec[2:], dims.rhs_spec[2:], dims.out_spec[2:])):
        taps *= _real_taps(lhs[ld], rhs[rd], out[od], p["window_strides"][d], p["padding"][d][0],
                           p["lhs_dilation"][d], p["rhs_dilation"][d])
    out_batch, out_features = out[dims.out_spec[0]], out[dims.out_spec[1]]
    return 2 * out_batch * out_features * rhs[dims.rhs_spec[1]] * taps


def _real_taps(n: int, k: int, m: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int) -> int:
    """(output position, kernel tap) pairs of one spatial dim that land on an input element."""
    last = (n - 1) * lhs_dil
    return sum(1 for o in range(m) for j in range(k)
               if 0 <= (x := o * stride + j * rhs_dil - pad_lo) <= last and x % lhs_dil == 0)


def _is_jaxpr(value) -> bool:
    return hasattr(value, "eqns") or hasattr(getattr(value, "jaxpr", None), "eqns")


def _as_jaxpr(value):
    return value if hasattr(value, "eqns") else value.jaxpr
