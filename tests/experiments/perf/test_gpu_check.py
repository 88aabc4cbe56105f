"""`experiments/perf/gpu_check.sh` runs end to end before a GPU run depends on it: with stand-in
`python` and `nvidia-smi` on PATH it runs every step in order under the budget, passes each its
JSON path, and skips what the budget no longer covers."""

import os
import stat
import subprocess

from tests.experiments.scripts import ROOT

SCRIPT = os.path.join(ROOT, "experiments", "perf", "gpu_check.sh")


def _fake_bin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "nvidia-smi"):
        tool = bin_dir / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls.txt"\n')
        tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _run(tmp_path, budget):
    env = dict(os.environ, PATH=f"{_fake_bin(tmp_path)}{os.pathsep}/usr/bin{os.pathsep}/bin")
    proc = subprocess.run(["bash", SCRIPT, str(tmp_path / "out"), str(budget)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    return proc.stdout, calls


def test_every_step_runs_in_order_within_the_budget(tmp_path):
    out, calls = _run(tmp_path, 540)
    steps = [line.split()[1] for line in out.splitlines() if line.startswith("== ") and "skipped" not in line]
    assert steps[:8] == ["sam2_large", "cudnn_tests", "sam2_large_scanned", "sam2_large_unpacked",
                         "sam2_large_cublas", "sam2_large_exact_gelu", "qwen3b_train", "qwen3b_decode"]
    sam2 = [c for c in calls if "benchmark_sam2" in c]
    assert "--noscan_blocks" in sam2[0] and "--scan_blocks" in sam2[1]
    assert all("--noscan_blocks" in c for c in sam2[2:])
    modules = [c.split()[2] for c in calls if c.startswith("python -m ")]
    assert modules[0] == "experiments.perf.benchmark_sam2" and "experiments.perf.benchmark_qwen" in modules
    assert f"--json_out={tmp_path}/out/sam2_large.json" in " ".join(calls)
    assert f"--profile_dir={tmp_path}/out/profiles/sam2_large" in calls[2]
    assert sum("--profile_dir=" in c for c in calls) == 3
    assert steps[-2:] == ["qwen3b_decode_scanned", "done,"]
    decode = [c for c in calls if "--mode=decode" in c]
    assert "--noscan_layers" in decode[0] and "--scan_layers" in decode[1]
    log = (tmp_path / "out" / "steps.log").read_text()
    assert log.startswith("== sam2_large: exit 0") and "== qwen3b_decode: exit 0" in log


def test_an_exhausted_budget_skips_steps(tmp_path):
    out, calls = _run(tmp_path, 20)
    assert "sam2_large: skipped" in out and "qwen3b_train: skipped" in out
    assert not any(c.startswith("python -m experiments") for c in calls)
