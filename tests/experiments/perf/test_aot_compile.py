"""Ahead-of-time compiles for this host's 8 devices and for a TPU v5p topology (libtpu, no TPU)."""

import os

import pytest

from tests.experiments.scripts import ROOT, run_json, run_module

pytestmark = pytest.mark.aot

POLICY = ["--preset=tiny", "--batch=4", "--prompt_len=40", "--new_tokens=8", "--image_px=112"]
TRAIN = ["--group_size=2", "--micro_batch_size=4"]   # the GRPO step: 4 prompts x 2 samples
LIBTPU = os.path.join(ROOT, ".cache", "libtpu")   # installed by tests/run.sh


def _compile(*flags):
    libtpu = ""
    if any(f.startswith("--topology=") for f in flags):
        assert os.path.isdir(LIBTPU), f"{LIBTPU} is missing: `bash tests/run.sh` installs libtpu there"
        libtpu = LIBTPU
    return run_json("experiments.perf.aot_compile", *flags, devices=8, pythonpath=libtpu)[0]


@pytest.mark.slow
@pytest.mark.parametrize("work,layers", [("train", "--scan_layers"), ("prefill", "--scan_layers"),
                                         ("decode", "--scan_layers"), ("decode", "--noscan_layers")])
def test_policy_work_on_local_mesh(work, layers):
    row = _compile(f"--work={work}", "--mesh=2,2,2", layers, *POLICY, *(TRAIN if work == "train" else ()))
    assert row["devices"] == 8 and row["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert row["scan_layers"] == (layers == "--scan_layers")
    assert row["peak_bytes"] > row["argument_bytes"] > 0
    # Donated state is updated in place: params + optimizer moments (train) or the KV cache.
    assert row["alias_bytes"] > 0.9 * row["output_bytes"] if work == "train" else row["alias_bytes"] > 0
    if work != "train":
        assert row["kv_cache_bytes_global"] > 0
    else:   # experiments.train's step: rollout, rewards, reference log-probs, 2 micro-batches of 4
        assert row["rows"] == 8 and row["response_len"] == 8 and row["micro_batch_size"] == 4
        parts = row["arguments_per_device"]
        assert row["reference_policy"] is True and parts["reference_params"] == parts["params"] > 0
        assert row["argument_bytes"] >= sum(parts.values())


@pytest.mark.slow
def test_tpu_topology_train_and_sam2():
    train = _compile("--work=train", "--topology=v5p:2x2x1", "--mesh=1,-1,1", *POLICY, *TRAIN)
    assert train["device_kind"].startswith("TPU v5") and train["devices"] == 4
    assert train["device_memory_gib"] == 95 and train["fits"] is True and train["attention"] == "tpu_auto"
    # The same work split over 4 chips here and 8 host devices: one FLOP count (the TPU kernel's
    # attention included, traced on the XLA path), and its time at v5p's 459 TFLOP/s.
    local = _compile("--work=train", "--mesh=2,2,2", *POLICY, *TRAIN)
    assert local["ms_lower_bound"] is None
    assert train["gflops_per_device"] * 4 == pytest.approx(local["gflops_per_device"] * 8, rel=1e-5)
    assert train["ms_compute_at_peak"] == pytest.approx(train["gflops_per_device"] / 459e3 * 1e3, abs=1e-3)
    assert train["ms_reading_arguments"] == pytest.approx(train["argument_bytes"] / 2765e9 * 1e3, abs=1e-3)
    assert train["ms_lower_bound"] == max(train["ms_compute_at_peak"], train["ms_reading_arguments"])
    sam2 = _compile("--work=sam2", "--sam2_preset=test_tiny", "--topology=v5p:2x2x1", "--mesh=-1,1,1",
                    "--batch=4")
    assert sam2["fits"] is True and sam2["peak_bytes"] > 0 and sam2["scan_blocks"] is True
    # every Hiera block a module of its own: the same FLOPs
    unscanned = _compile("--work=sam2", "--sam2_preset=test_tiny", "--topology=v5p:2x2x1", "--mesh=-1,1,1",
                         "--batch=4", "--noscan_blocks")
    assert unscanned["scan_blocks"] is False
    assert unscanned["gflops_per_device"] == pytest.approx(sam2["gflops_per_device"], rel=1e-6)


def test_bad_mesh_and_topology_are_named():
    for flag, words in (("--mesh=3,-1,1", "--mesh='3,-1,1'"), ("--topology=v9z:1x1", "--topology='v9z:1x1'"),
                        ("--preset=13b", "--preset='13b' is not one of")):
        proc = run_module("experiments.perf.aot_compile", *POLICY, flag, devices=8, timeout=300)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr[-2000:]


def test_gpu_target_errors_are_named():
    """A GPU target needs JAX's CUDA plugin (`.[aot-gpu]`, not in the test environment): without it
    the error says what to install; unknown cards and a census of a CPU program are refused."""
    import importlib.util

    def installed(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:   # its parent package is missing
            return False
    proc = run_module("experiments.perf.aot_compile", "--work=sam2", "--sam2_preset=test_tiny", "--topology=gpu:a100")
    assert proc.returncode != 0 and "the GPU targets are gpu:h100, gpu:h200" in proc.stderr
    proc = run_module("experiments.perf.aot_compile", "--work=sam2", "--sam2_preset=test_tiny", "--mesh=1,1,1",
                      "--census")
    assert proc.returncode != 0 and "--census reads a GPU program" in proc.stderr
    if not any(installed(m) for m in ("jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12")):
        proc = run_module("experiments.perf.aot_compile", "--work=sam2", "--sam2_preset=test_tiny", "--mesh=1,1,1",
                          "--topology=gpu:h100")
        assert proc.returncode != 0 and 'pip install -e ".[aot-gpu]"' in proc.stderr, proc.stderr[-2000:]


def test_gpu_target_config_describes_the_card():
    from experiments.perf.gpu_targets import GPU_TARGETS, gpu_target_config
    for card, spec in GPU_TARGETS.items():
        text = gpu_target_config(card)
        assert f'device_description_str: "{spec["name"]}"' in text and "major: 9 minor: 0" in text
        assert f"device_memory_size: {spec['memory_bytes']}" in text and text.count("{") == text.count("}")
