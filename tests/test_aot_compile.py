"""Ahead-of-time compiles for this host's 8 devices and for a TPU v5p topology (libtpu, no TPU)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICY = ["--preset=tiny", "--batch=4", "--prompt_len=40", "--new_tokens=8", "--image_px=112"]


LIBTPU = os.path.join(ROOT, ".cache", "libtpu")   # installed by tests/run.sh


def _compile(*flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    if any(f.startswith("--topology=") for f in flags):
        assert os.path.isdir(LIBTPU), f"{LIBTPU} is missing: `bash tests/run.sh` installs libtpu there"
        env["PYTHONPATH"] = os.pathsep.join(p for p in (LIBTPU, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "experiments.aot_compile", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("work", ["train", "prefill", "decode"])
def test_policy_work_on_local_mesh(work):
    row = _compile(f"--work={work}", "--mesh=2,2,2", *POLICY)
    assert row["devices"] == 8 and row["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert row["peak_bytes"] > row["argument_bytes"] > 0
    # Donated state is updated in place: params + optimizer moments (train) or the KV cache.
    assert row["alias_bytes"] > 0.9 * row["output_bytes"] if work == "train" else row["alias_bytes"] > 0
    if work != "train":
        assert row["kv_cache_bytes_global"] > 0


def test_tpu_topology_train_and_sam2():
    train = _compile("--work=train", "--topology=v5p:2x2x1", "--mesh=1,-1,1", *POLICY)
    assert train["device_kind"].startswith("TPU v5") and train["devices"] == 4
    assert train["device_memory_gib"] == 95 and train["fits"] is True and train["attention"] == "tpu_auto"
    sam2 = _compile("--work=sam2", "--sam2_preset=test_tiny", "--topology=v5p:2x2x1", "--mesh=-1,1,1",
                    "--batch=4")
    assert sam2["fits"] is True and sam2["peak_bytes"] > 0


def test_bad_mesh_and_topology_are_named():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    for flag, words in (("--mesh=3,-1,1", "--mesh='3,-1,1'"), ("--topology=v9z:1x1", "--topology='v9z:1x1'"),
                        ("--preset=13b", "--preset='13b' is not one of")):
        proc = subprocess.run([sys.executable, "-m", "experiments.aot_compile", *POLICY, flag], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr[-2000:]
