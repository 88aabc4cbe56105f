"""The kernel census reads a real compiled XLA:GPU program.

`data/gpu_mlp_scan.hlo.txt` was compiled for an H100 without one (`experiments.perf.aot_compile`'s GPU
target, CUDA plugin, no GPU), from: a 3-step `lax.scan` over x[256, 128] bf16 of
`x + gelu_tanh(x @ w1 + b1) @ w2 + b2` (w1 [128, 512], w2 [512, 128]), then cuDNN attention on
q, k, v [2, 128, 4, 64] bf16 and x transposed."""

import os

import pytest

from tests.experiments.scripts import ROOT, run_json, run_module

from experiments.perf import hlo_census

FIXTURE = os.path.join(ROOT, "tests", "experiments", "perf", "data", "gpu_mlp_scan.hlo.txt")


@pytest.fixture(scope="module")
def kernels():
    with open(FIXTURE) as f:
        return hlo_census.census(f.read())


def test_loop_kernels_count_every_trip_and_cublas_epilogues(kernels):
    mm = [k for k in kernels if k.kind == "matmul (cuBLAS)"]
    assert [(k.launches, k.epilogue) for k in mm] == [(3, "BIAS_GELU"), (3, "BIAS")]
    assert all(k.loop != "entry" for k in mm)
    assert all(k.flops == 2 * 256 * 512 * 128 for k in mm)
    # fc1 reads x, w1, b1 and writes h; fc2 reads h, w2, b2 and x (the residual as cuBLAS's C)
    # and writes x: bf16 bytes, the int8 workspace left out.
    assert mm[0].bytes == 2 * (256 * 128 + 128 * 512 + 512 + 256 * 512)
    assert mm[1].bytes == 2 * (256 * 512 + 512 * 128 + 128 + 256 * 128 + 256 * 128)
    # slicing a layer's weights out of the stacked [3, ...] params counts the slice (read and
    # written) and the s32 loop index, not the stack
    slices = [k for k in kernels if k.kind == "layer slicing"]
    assert sorted(k.bytes for k in slices) == sorted(2 * 2 * n + 4 for n in (128 * 512, 512, 512 * 128, 128))


def test_attention_and_entry_kernels(kernels):
    (att,) = [k for k in kernels if k.kind == "attention (cuDNN)"]
    assert att.launches == 1 and att.loop == "entry"
    assert att.flops == 4 * 2 * 128 * 4 * 64 * 128 and att.bytes == 4 * 2 * (2 * 128 * 4 * 64)
    assert any(k.kind == "transpose" and k.bytes == 2 * 2 * 256 * 128 for k in kernels)


def test_summary_and_roofline(kernels):
    s = hlo_census.summarize(kernels, bandwidth_gbps=1000.0, peak_tflops=100.0)
    assert s["launches"] == sum(k.launches for k in kernels)
    assert s["cublas_epilogues"] == {"BIAS_GELU": 3, "BIAS": 3}
    flops = 6 * 2 * 256 * 512 * 128 + 4 * 2 * 128 * 4 * 64 * 128
    assert s["tflop"] == pytest.approx(flops / 1e12, abs=1e-4)
    mm = next(r for r in s["kinds"] if r["kind"] == "matmul (cuBLAS)")
    # each matmul: ~0.5 MB at 1000 GB/s (0.46-0.52 us) vs 33.5 MFLOP at 100 TFLOP/s (0.34 us)
    want = sum(3 * max(b / 1e12, 2 * 256 * 512 * 128 / 1e14) for b in (459776, 524544)) * 1e3
    got = sum(hlo_census.roofline_seconds(k, 1000.0, 100.0) * k.launches for k in kernels
              if k.kind == "matmul (cuBLAS)") * 1e3
    assert got == pytest.approx(want, rel=1e-6) and mm["roofline_ms"] == pytest.approx(want, abs=5e-4)


def test_command_line(tmp_path):
    rows = run_json("experiments.perf.hlo_census", f"--hlo={FIXTURE}", "--top=3")
    assert rows[0]["cublas_epilogues"] == {"BIAS_GELU": 3, "BIAS": 3}
    bad = tmp_path / "not_hlo.txt"
    bad.write_text("hello\n")
    proc = run_module("experiments.perf.hlo_census", f"--hlo={bad}")
    assert proc.returncode != 0 and "expected one ENTRY computation" in proc.stderr
    proc = run_module("experiments.perf.hlo_census", f"--hlo={tmp_path}/missing.txt")
    assert proc.returncode != 0 and "missing.txt" in proc.stderr


# Hand-written in the text format of compiled XLA:GPU programs: a loop of 36 trips writing one
# [1, 1024, 1024] f32 slice per trip into a [36, 1024, 1024] buffer in place, a Triton GEMM
# fusion, and a conditional with two branches (the second does twice the first's work).
HANDWRITTEN = """HloModule m, entry_computation_layout={(f32[36,1024,1024]{2,1,0})->f32[36,1024,1024]{2,1,0}}

%fused_dus (p0: f32[36,1024,1024], p1: f32[1,1024,1024], p2: s32[]) -> f32[36,1024,1024] {
  %p0 = f32[36,1024,1024]{2,1,0} parameter(0)
  %p1 = f32[1,1024,1024]{2,1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %z = s32[] constant(0)
  ROOT %dus = f32[36,1024,1024]{2,1,0} dynamic-update-slice(%p0, %p1, %p2, %z, %z)
}

%fused_piece (q0: s32[]) -> f32[1,1024,1024] {
  %q0 = s32[] parameter(0)
  %c = f32[] convert(%q0)
  ROOT %b = f32[1,1024,1024]{2,1,0} broadcast(%c), dimensions={}
}

%sum (s0: f32[], s1: f32[]) -> f32[] {
  %s0 = f32[] parameter(0)
  %s1 = f32[] parameter(1)
  ROOT %s2 = f32[] add(%s0, %s1)
}

%fused_row_sums (v0: f32[36,1024,1024], v1: s32[]) -> f32[1024] {
  %v0 = f32[36,1024,1024]{2,1,0} parameter(0)
  %view = f32[36,1024,1024]{2,1,0} bitcast(%v0)
  %v1 = s32[] parameter(1)
  %z0 = s32[] constant(0)
  %one_layer = f32[1,1024,1024]{2,1,0} dynamic-slice(%view, %v1, %z0, %z0), dynamic_slice_sizes={1,1024,1024}
  %f0 = f32[] constant(0)
  ROOT %rows = f32[1024]{0} reduce(%one_layer, %f0), dimensions={0,2}, to_apply=%sum
}

%fused_inc (r0: s32[]) -> s32[] {
  %r0 = s32[] parameter(0)
  %one = s32[] constant(1)
  ROOT %a = s32[] add(%r0, %one)
}

%body (t: (s32[], f32[36,1024,1024])) -> (s32[], f32[36,1024,1024]) {
  %t = (s32[], f32[36,1024,1024]{2,1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %buf = f32[36,1024,1024]{2,1,0} get-tuple-element(%t), index=1
  %piece = f32[1,1024,1024]{2,1,0} fusion(%i), kind=kLoop, calls=%fused_piece
  %upd = f32[36,1024,1024]{2,1,0} fusion(%buf, %piece, %i), kind=kLoop, calls=%fused_dus
  %rows.1 = f32[1024]{0} fusion(%buf, %i), kind=kInput, calls=%fused_row_sums
  %next = s32[] fusion(%i), kind=kLoop, calls=%fused_inc
  ROOT %out = (s32[], f32[36,1024,1024]{2,1,0}) tuple(%next, %upd)
}

%fused_lt (u0: s32[]) -> pred[] {
  %u0 = s32[] parameter(0)
  %n = s32[] constant(36)
  ROOT %lt = pred[] compare(%u0, %n), direction=LT
}

%cond (t.1: (s32[], f32[36,1024,1024])) -> pred[] {
  %t.1 = (s32[], f32[36,1024,1024]{2,1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%t.1), index=0
  ROOT %c.1 = pred[] fusion(%i.1), kind=kLoop, calls=%fused_lt
}

%gemm_fusion_dot (g0: bf16[64,128], g1: bf16[128,32]) -> bf16[64,32] {
  %g0 = bf16[64,128]{1,0} parameter(0)
  %g1 = bf16[128,32]{1,0} parameter(1)
  ROOT %d = bf16[64,32]{1,0} dot(%g0, %g1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%assign (a0.1: bf16[], a1.1: bf16[]) -> bf16[] {
  %a0.1 = bf16[] parameter(0)
  ROOT %a1.1 = bf16[] parameter(1)
}

%fused_cache_write (w0: bf16[8,1024,64], w1: s32[8,1], w2: bf16[8,1,64]) -> bf16[8,1024,64] {
  %w0 = bf16[8,1024,64]{2,1,0} parameter(0)
  %w1 = s32[8,1]{1,0} parameter(1)
  %w2 = bf16[8,1,64]{2,1,0} parameter(2)
  ROOT %sc = bf16[8,1024,64]{2,1,0} scatter(%w0, %w1, %w2), update_window_dims={1,2}, inserted_window_dims={}, scatter_dims_to_operand_dims={1}, index_vector_dim=1, to_apply=%assign
}

%fused_embed (e0: bf16[1000,64], e1: s32[8,1]) -> bf16[8,1,64] {
  %e0 = bf16[1000,64]{1,0} parameter(0)
  %e1 = s32[8,1]{1,0} parameter(1)
  ROOT %rows_of = bf16[8,1,64]{2,1,0} gather(%e0, %e1), offset_dims={1,2}, collapsed_slice_dims={}, start_index_map={0}, index_vector_dim=1, slice_sizes={1,64}
}

%fused_neg (n0: bf16[64,32]) -> bf16[64,32] {
  %n0 = bf16[64,32]{1,0} parameter(0)
  ROOT %ng = bf16[64,32]{1,0} negate(%n0)
}

%branch_a (a0: bf16[64,32]) -> bf16[64,32] {
  %a0 = bf16[64,32]{1,0} parameter(0)
  ROOT %na = bf16[64,32]{1,0} fusion(%a0), kind=kLoop, calls=%fused_neg
}

%branch_b (b0: bf16[64,32]) -> bf16[64,32] {
  %b0 = bf16[64,32]{1,0} parameter(0)
  %nb.0 = bf16[64,32]{1,0} fusion(%b0), kind=kLoop, calls=%fused_neg
  ROOT %nb = bf16[64,32]{1,0} fusion(%nb.0), kind=kLoop, calls=%fused_neg
}

ENTRY %main (x: f32[36,1024,1024], l: bf16[64,128], r: bf16[128,32], k: s32[], cache: bf16[8,1024,64], pos: s32[8,1], new: bf16[8,1,64], table: bf16[1000,64]) -> f32[36,1024,1024] {
  %x = f32[36,1024,1024]{2,1,0} parameter(0)
  %l = bf16[64,128]{1,0} parameter(1)
  %r = bf16[128,32]{1,0} parameter(2)
  %k = s32[] parameter(3)
  %zero = s32[] constant(0)
  %init = (s32[], f32[36,1024,1024]{2,1,0}) tuple(%zero, %x)
  %w = (s32[], f32[36,1024,1024]{2,1,0}) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"36"}}
  %mm = bf16[64,32]{1,0} fusion(%l, %r), kind=kCustom, calls=%gemm_fusion_dot
  %sel = bf16[64,32]{1,0} conditional(%k, %mm, %mm), branch_computations={%branch_a, %branch_b}
  %cache = bf16[8,1024,64]{2,1,0} parameter(4)
  %pos = s32[8,1]{1,0} parameter(5)
  %new = bf16[8,1,64]{2,1,0} parameter(6)
  %written = bf16[8,1024,64]{2,1,0} fusion(%cache, %pos, %new), kind=kLoop, calls=%fused_cache_write
  %table = bf16[1000,64]{1,0} parameter(7)
  %looked_up = bf16[8,1,64]{2,1,0} fusion(%table, %pos), kind=kLoop, calls=%fused_embed
  ROOT %res = f32[36,1024,1024]{2,1,0} get-tuple-element(%w), index=1
}
"""


def test_in_place_updates_gemm_fusions_conditionals_and_loop_conditions():
    kernels = hlo_census.census(HANDWRITTEN)
    by_kind = {}
    for k in kernels:
        by_kind.setdefault(k.kind, []).append(k)
    upd, cache = by_kind["in-place update"]
    assert upd.launches == 36 and upd.bytes == 2 * 4 * 1024 * 1024 + 4   # the slice and index, not the buffer
    assert cache.launches == 1 and cache.bytes == 2 * (8 * 64 * 2) + 8 * 4   # a KV-cache write: one row per sequence
    # an embedding lookup reads the rows it gathers, not the table
    (embed,) = [k for k in kernels if k.target == "fused_embed"]
    assert embed.bytes == 2 * (8 * 64 * 2) + 8 * 4
    # a reduction over one layer of the buffer (read through a bitcast view) reads that layer
    (rows,) = by_kind["reduction (norms, softmax)"]
    assert rows.launches == 36 and rows.bytes == 4 * 1024 * 1024 + 4 + 4 * 1024
    (mm,) = by_kind["matmul (fusion)"]
    assert mm.flops == 2 * 64 * 32 * 128 and mm.launches == 1
    # the conditional's costlier branch, and its branch index (an s32) read back by the host;
    # the loop condition runs trips + 1 times
    assert sorted(k.name for k in kernels if k.target == "fused_neg") == ["nb", "nb.0"]
    (sel,) = by_kind["conditional (branch index to host)"]
    assert sel.name == "sel" and sel.launches == 1 and sel.bytes == 4 and sel.loop == "entry"
    cheap = hlo_census.census(HANDWRITTEN.replace("%branch_a, %branch_b}", "%branch_a, %branch_a}"))
    assert [k.name for k in cheap if k.target == "fused_neg"] == ["na"]
    assert next(k for k in kernels if k.target == "fused_lt").launches == 37
    assert hlo_census.array_bytes("(s4[7], c64[2], pred[3], u8[100])") == 4 + 16 + 3


def test_broken_text_is_named():
    with pytest.raises(ValueError, match="its body or condition is missing"):
        hlo_census.census(HANDWRITTEN.replace("condition=%cond, body=%body", "condition=%cond, body=%gone"))
    with pytest.raises(ValueError, match="calls %branch_c, which is not in the HLO text"):
        hlo_census.census(HANDWRITTEN.replace("%branch_a, %branch_b}", "%branch_a, %branch_c}"))
