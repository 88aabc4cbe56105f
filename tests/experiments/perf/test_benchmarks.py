"""The benchmark scripts run end to end at tiny sizes and report numbers they checked.

They are what a GPU or TPU run starts with; these keep them from rotting. Timings are
not asserted (speed is reported by the scripts, not tested).
"""

import json

import pytest

from tests.experiments.scripts import run_json as _run


@pytest.mark.slow
def test_benchmark_rewards(tmp_path):
    out = tmp_path / "rewards.json"
    row, _ = _run("experiments.perf.benchmark_rewards", "--num_responses=32", "--tokens=60", "--repeats=1",
                  f"--json_out={out}")
    assert row["responses"] == 32 and row["agreement"] == 1.0 and row["device_s"] > 0
    assert json.loads(out.read_text()) == row


@pytest.mark.slow
@pytest.mark.parametrize("mode,layers", [("forward", "--scan_layers"), ("train", "--scan_layers"),
                                         ("decode", "--scan_layers"), ("decode", "--noscan_layers")])
def test_benchmark_qwen(mode, layers, tmp_path):
    row, _ = _run("experiments.perf.benchmark_qwen", f"--mode={mode}", layers, "--preset=tiny", "--batch=2",
                  "--seq=48", "--new_tokens=8", "--chunk_size=4", "--warmup=0", "--iters=1",
                  f"--profile_dir={tmp_path}")
    assert row["mode"] == mode and row["ours_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
    assert row["scan_layers"] == (layers == "--scan_layers")
    # --profile_dir: the trace (decode continues from the donated cache) and the compiled HLO
    assert len(list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))) == 1
    assert "HloModule" in (tmp_path / f"qwen_{mode}.hlo.txt").read_text()[:200]
    assert row["max_abs_diff"] < 1e-4
    if mode == "forward":   # the output layer alone: 2 x tokens x 64 x 151,936; tiny layers add little
        head = 2 * 2 * 48 * 64 * 151936
        assert head < row["gflops_per_call"] * 1e9 < 1.2 * head


def _transformers_sam2_flops(preset: str) -> int:
    """Matmul + convolution FLOPs of transformers' `Sam2Model` (eager attention, so that torch's
    counter sees the attention products) on the benchmark's work for one image: a box and two
    points, multimask output, counted by `torch.utils.flop_counter`."""
    import jax.numpy as jnp
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import Sam2Config, Sam2Model

    from segzero_jax.models.sam2 import get_preset
    from segzero_jax.models.sam2.config import transformers_config_kwargs

    cfg = get_preset(preset, dtype=jnp.float32)
    model = Sam2Model(Sam2Config(**transformers_config_kwargs(cfg))).eval()
    model.set_attn_implementation("eager")
    f, s = cfg.image_size / 1024, cfg.image_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(pixel_values=torch.zeros(1, 3, s, s), input_boxes=torch.tensor([[[100.0, 100.0, 500.0, 600.0]]]) * f,
              input_points=torch.tensor([[[[200.0, 300.0], [300.0, 400.0]]]]) * f,
              input_labels=torch.ones(1, 1, 2, dtype=torch.long), multimask_output=True)
    return counter.get_total_flops()


@pytest.mark.slow
def test_benchmark_sam2():
    """Both sides' TFLOP/s divide one FLOP count (ours) by their times; that count must be the
    peer's work too, which torch's own counter measures on the peer."""
    row, out = _run("experiments.perf.benchmark_sam2", "--preset=test_tiny", "--batch=1", "--dtype=float32",
                    "--peer=transformers", "--warmup=0", "--iters=1")
    assert row["ours"]["lowres"]["images_per_s"] > 0 and row["peer"]["lowres"]["images_per_s"] > 0
    assert "speed-up over" in out
    assert row["ours"]["flops_per_call"] == pytest.approx(_transformers_sam2_flops("test_tiny"), rel=0.03)


@pytest.mark.slow
def test_benchmark_sam2_profile(tmp_path):
    """`--profile_dir` leaves a trace and the optimised HLO that `experiments.perf.profile_summary`
    reads; `--predict_batch=false` skips the evaluator's path."""
    row, _ = _run("experiments.perf.benchmark_sam2", "--preset=test_tiny", "--batch=1", "--dtype=float32",
                  "--peer=none", "--warmup=0", "--iters=1", "--predict_batch=false", f"--profile_dir={tmp_path}")
    assert "predict_batch" not in row["ours"] and row["ours"]["lowres"]["images_per_s"] > 0
    traces = list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    from experiments.perf.hlo_census import op_names
    names = op_names((tmp_path / "lowres.hlo.txt").read_text())
    assert any("Sam2.encode_image/trunk" in op for op in names.values())


@pytest.mark.slow
def test_benchmark_sam2_error_vs_float32():
    """--error_vs_float32 measures the run against the float32 model with the exact GELU: zero for
    that model itself, small but not zero for bf16 with either trunk GELU."""
    common = ("--preset=test_tiny", "--batch=2", "--peer=none", "--warmup=0", "--iters=1", "--predict_batch=false",
              "--error_vs_float32")
    rows = {args: _run("experiments.perf.benchmark_sam2", *common, *args)[0]["ours"]["error_vs_float32"]
            for args in (("--dtype=float32",), ("--dtype=float32", "--trunk_gelu=tanh"),
                         ("--dtype=bfloat16", "--trunk_gelu=exact"), ("--dtype=bfloat16", "--trunk_gelu=tanh"))}
    exact32, tanh32, exact16, tanh16 = rows.values()
    assert exact32["logits_max_abs"] == 0 and exact32["mask_sign_agreement"] == 1
    for e in (tanh32, exact16, tanh16):
        assert 0 < e["logits_mean_abs"] < 0.05 * e["reference_logits_mean_abs"] and e["mask_sign_agreement"] > 0.95
    assert tanh32["logits_mean_abs"] < exact16["logits_mean_abs"]   # the forms differ far less than bf16 rounds


@pytest.mark.parametrize("module,flag,words", [
    ("experiments.perf.benchmark_qwen", "--preset=13b", "unknown Qwen2.5-VL preset '13b'"),
    ("experiments.perf.benchmark_qwen", "--image_px=30", "--image_px=30 must be a multiple of 28"),
    ("experiments.perf.benchmark_sam2", "--preset=hiera_huge", "--preset='hiera_huge' is not one of"),
    ("experiments.perf.benchmark_sam2", "--attention_pack_tokens=-1", "--attention_pack_tokens=-1: -1 is not a non-negative"),
    ("experiments.perf.aot_compile", "--attention_pack_tokens=-8", "--attention_pack_tokens=-8: -8 is not a non-negative"),
])
def test_bad_flags_are_named_without_a_traceback(module, flag, words):
    from tests.experiments.scripts import run_module

    proc = run_module(module, flag, timeout=120)
    assert proc.returncode != 0 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
