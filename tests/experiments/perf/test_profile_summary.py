"""`experiments.perf.profile_summary` groups kernel times by what they compute. The kernel names are
those an H100 trace of SAM2-Large held; the HLO is a real compiled module's text."""

import jax
import jax.numpy as jnp
import pytest

from experiments.perf.hlo_census import op_names
from experiments.perf.profile_summary import (find_files, kernel_group, op_group, stream_launches,
                                        summarize)
from tests.experiments.scripts import run_module


def _compiled_text():
    def mlp(x, w):
        with jax.named_scope("segment_6"), jax.named_scope("mlp"):
            return jnp.tanh(x @ w) * 2.0
    x = jnp.ones((8, 16))
    return jax.jit(mlp).lower(x, jnp.ones((16, 16))).compile().as_text()


def test_op_group_drops_wrappers_indices_and_repeats():
    name = "jit(<lambda>)/Sam2.encode_image/trunk/while/body/eval_jaxpr/segment_6/segment_6/mlp/mul"
    assert op_group(name) == "mlp/mul"
    assert op_group("jit(f)/trunk/segment_12/add") == "segment_*/add"
    assert op_group("mul") == "mul"


def test_library_kernels_are_named_by_kind():
    assert kernel_group("nvjet_sm90_tst_192x128_64x5_1x2_h_bz_coopB_NNT", {}) == "matmul"
    assert kernel_group("sm80_xmma_fprop_implicit_gemm_indexed_bf16bf16_bf16f32_f32_n", {}) == "matmul"
    assert kernel_group("gemm_fusion_dot_109", {}) == "matmul"
    assert kernel_group("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7", {}) == "attention"
    assert kernel_group("memcpy128", {}) == "copy"
    assert kernel_group("loop_add_fusion_99", {}) == "other: loop_add_fusion_99"


def test_fusion_kernels_map_to_model_ops_through_the_hlo():
    names = op_names(_compiled_text())
    mine = {k: v for k, v in names.items() if "mlp" in v}
    assert mine, names
    inst, op = next(iter(mine.items()))
    kernel = inst.replace(".", "_") if "." in inst else inst   # XLA's kernel name for instruction "x.4"
    assert kernel_group(kernel, names) == op_group(op) and op_group(op).startswith("mlp/")


def test_summary_divides_by_iterations_and_sorts():
    kernels = [{"kernel_name": "nvjet_a", "total_duration_us": 3000.0, "occurrences": 4},
               {"kernel_name": "nvjet_b", "total_duration_us": 1000.0, "occurrences": 2},
               {"kernel_name": "cudnn_sdpa_x", "total_duration_us": 2000.0, "occurrences": 2},
               {"kernel_name": "fusion_3", "total_duration_us": 2000.0, "occurrences": 6}]
    out = summarize(kernels, {"fusion.3": "jit(f)/layers_2/norm/mul"}, iterations=2)
    assert out["kernel_ms_per_iteration"] == 4.0
    assert [g["group"] for g in out["groups"]][0] == "matmul"
    by = {g["group"]: g for g in out["groups"]}
    assert by["matmul"]["ms_per_iteration"] == 2.0 and by["matmul"]["share"] == 0.5
    assert by["matmul"]["launches_per_iteration"] == 3.0 and by["matmul"]["distinct_kernels"] == 2
    assert by["norm/mul"]["ms_per_iteration"] == 1.0 and by["attention"]["share"] == 0.25
    with pytest.raises(ValueError, match="iterations=0"):
        summarize(kernels, {}, iterations=0)


def test_a_directory_without_a_trace_is_named(tmp_path):
    proc = run_module("experiments.perf.profile_summary", f"--trace={tmp_path}", timeout=120)
    assert proc.returncode != 0 and "no .xplane.pb file there" in proc.stderr and "Traceback" not in proc.stderr


def test_the_hlo_is_found_above_the_trace(tmp_path):
    """--profile_dir writes NAME.hlo.txt at its root and the trace folders below it."""
    run = tmp_path / "plugins" / "profile" / "2026_12_01"
    run.mkdir(parents=True)
    (run / "host.xplane.pb").write_bytes(b"")
    (tmp_path / "lowres.hlo.txt").write_text("HloModule m\n")
    for trace in (tmp_path, run / "host.xplane.pb", run):
        assert find_files(str(trace)) == (str(run / "host.xplane.pb"), str(tmp_path / "lowres.hlo.txt"))
    assert find_files(str(run), "given.txt")[1] == "given.txt"


def test_launches_come_from_the_gpu_streams_in_time_order():
    """Trace-viewer events as xprof writes them: the "XLA Ops" line repeats each kernel's span and
    the host has its own lines; only the GPU's "Stream #" threads are kernel launches."""
    meta = lambda pid, tid, kind, name: {"ph": "M", "pid": pid, "tid": tid, "name": kind, "args": {"name": name}}
    events = [meta(1, 0, "process_name", "/device:GPU:0"), meta(701, 0, "process_name", "/host:CPU"),
              meta(1, 1, "thread_name", "Stream #14(Compute,MemcpyD2D,Memset)"),
              meta(1, 5, "thread_name", "XLA Ops - from #14"), meta(701, 2, "thread_name", "Stream #1"),
              {"ph": "X", "pid": 1, "tid": 1, "name": "sdpa_b", "ts": 20.0, "dur": 5.0},
              {"ph": "X", "pid": 1, "tid": 1, "name": "sdpa_a", "ts": 10.0, "dur": 7.5},
              {"ph": "X", "pid": 1, "tid": 5, "name": "fusion.3", "ts": 10.0, "dur": 7.5},
              {"ph": "X", "pid": 701, "tid": 2, "name": "host_thing", "ts": 1.0, "dur": 100.0}]
    assert stream_launches(events) == [{"kernel_name": "sdpa_a", "us": 7.5}, {"kernel_name": "sdpa_b", "us": 5.0}]
