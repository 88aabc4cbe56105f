"""The kernel census reads a real compiled XLA:GPU program.

`data/gpu_mlp_scan.hlo.txt` was compiled for an H100 without one (`experiments.aot_compile`'s GPU
target, CUDA plugin, no GPU), from: a 3-step `lax.scan` over x[256, 128] bf16 of
`x + gelu_tanh(x @ w1 + b1) @ w2 + b2` (w1 [128, 512], w2 [512, 128]), then cuDNN attention on
q, k, v [2, 128, 4, 64] bf16 and x transposed."""

import os

import pytest

from tests.experiments.scripts import ROOT, run_json, run_module

from experiments import hlo_census

FIXTURE = os.path.join(ROOT, "tests", "experiments", "data", "gpu_mlp_scan.hlo.txt")


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
    # slicing a layer's weights out of the stacked [3, ...] params counts the slice, not the stack
    slices = [k for k in kernels if k.kind == "layer slicing"]
    assert sorted(k.bytes for k in slices) == sorted(2 * 2 * n for n in (128 * 512, 512, 512 * 128, 128))


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
    rows = run_json("experiments.hlo_census", f"--hlo={FIXTURE}", "--top=3")
    assert rows[0]["cublas_epilogues"] == {"BIAS_GELU": 3, "BIAS": 3}
    bad = tmp_path / "not_hlo.txt"
    bad.write_text("hello\n")
    proc = run_module("experiments.hlo_census", f"--hlo={bad}")
    assert proc.returncode != 0 and "expected one ENTRY computation" in proc.stderr
    proc = run_module("experiments.hlo_census", f"--hlo={tmp_path}/missing.txt")
    assert proc.returncode != 0 and "missing.txt" in proc.stderr
