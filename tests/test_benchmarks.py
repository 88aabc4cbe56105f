"""The benchmark scripts run end to end at tiny sizes and report numbers they checked.

They are what an accelerator session runs first; these keep them from rotting. Timings are
not asserted (speed is reported by the scripts, not tested).
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *flags):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = [line for line in proc.stdout.splitlines() if line.startswith("{")][-1]
    return json.loads(last), proc.stdout


def test_benchmark_rewards():
    row, _ = _run("experiments.benchmark_rewards", "--num_responses=32", "--tokens=60", "--repeats=1")
    assert row["responses"] == 32 and row["agreement"] == 1.0 and row["device_s"] > 0


@pytest.mark.parametrize("mode", ["forward", "train", "decode"])
def test_benchmark_qwen(mode):
    row, _ = _run("experiments.benchmark_qwen", f"--mode={mode}", "--preset=tiny", "--batch=2", "--seq=48",
                  "--new_tokens=8", "--chunk_size=4", "--warmup=0", "--iters=1")
    assert row["mode"] == mode and row["ours_tokens_per_s"] > 0 and row["hf_tokens_per_s"] > 0
    assert row["max_abs_diff"] < 1e-4


def test_benchmark_sam2():
    row, out = _run("experiments.benchmark_sam2", "--preset=test_tiny", "--batch=1", "--dtype=float32",
                    "--peer=transformers", "--warmup=0", "--iters=1")
    assert row["ours"]["lowres"]["images_per_s"] > 0 and row["peer"]["lowres"]["images_per_s"] > 0
    assert "speed-up over" in out
