"""experiments.train end to end on the tiny default: metrics, samples and checkpoints are written;
a run stopped by SIGTERM and one killed by SIGKILL resume to params bitwise equal to an
uninterrupted run's; bad inputs are one line."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 4


def _overrides(data_dir, steps=STEPS):
    return [f"--config.data.data_dir={data_dir}", "--config.model.standins=false", "--config.data.batch_size=2",
            "--config.rl.group_size=2",
            "--config.rl.max_response_length=6", "--config.rl.micro_batch_size=2",
            "--config.rl.update_batch_size=1", f"--config.train.num_steps={steps}",
            "--config.train.checkpoint_every=1", "--config.train.samples_every=2",
            "--config.train.max_checkpoints=2", "--config.train.log_every=1",
            "--config.train.eval_every=0", "--config.train.final_eval_split=", "--noprogress"]


def _env(cache):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0", PYTHONPATH=ROOT)
    return env


def _cmd(workdir, data_dir, steps=STEPS, extra=()):
    return [sys.executable, "-m", "experiments.train", "--config=experiments/configs/default.py",
            f"--workdir={workdir}", *_overrides(data_dir, steps), *extra]


def _run(workdir, data_dir, cache, steps=STEPS, extra=()):
    return subprocess.run(_cmd(workdir, data_dir, steps, extra), cwd=ROOT, env=_env(cache), capture_output=True,
                          text=True, timeout=900)


def _wait_for_checkpoint(proc, workdir, step, timeout=600):
    directory = os.path.join(workdir, "checkpoints")
    start = time.time()
    while time.time() - start < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before checkpoint {step}: {proc.stderr.read()[-3000:]}")
        done = [int(d) for d in (os.listdir(directory) if os.path.isdir(directory) else []) if d.isdigit()]
        if any(d >= step for d in done):
            return max(done)
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint {step} after {timeout} s")


def _final_params(workdir):
    from segzero_jax.train_checkpoints import TrainCheckpoints, restore_trained_policy
    assert TrainCheckpoints(workdir, async_save=False).latest_step() == STEPS
    _, params = restore_trained_policy(workdir)
    import jax
    return [np.asarray(a) for a in jax.tree.leaves(params)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from data_pipelines.synthetic import SegzeroSynthetic
    path = str(tmp_path_factory.mktemp("tfds"))
    SegzeroSynthetic(data_dir=path).download_and_prepare()
    return path


@pytest.mark.slow
def test_interrupted_runs_resume_bitwise(tmp_path, data_dir):
    cache = str(tmp_path / "jax_cache")
    straight = str(tmp_path / "straight")
    done = _run(straight, data_dir, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = [json.loads(line) for line in open(os.path.join(straight, "metrics.jsonl"))]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    for key in ("reward/total", "reward/bbox_iou", "actor/kl_loss", "actor/entropy", "actor/grad_norm",
                "response_length/mean", "response_length/truncated", "step_seconds", "learning_rate",
                "generated_tokens_per_second", "actor/pg_clipfrac", "actor/ppo_kl"):
        assert key in metrics[-1], key
    samples = [json.loads(line) for line in open(os.path.join(straight, "samples.jsonl"))]
    assert {s["step"] for s in samples} == {1, 2, 4} and all("response" in s for s in samples)
    assert os.listdir(os.path.join(straight, "tensorboard"))
    want = _final_params(straight)
    # the workdir's newest policy exports to HF safetensors that read back to the same params
    export = str(tmp_path / "hf")
    exported = subprocess.run([sys.executable, "-m", "experiments.convert", f"--checkpoint={straight}",
                               f"--export_hf={export}"], cwd=ROOT, env=_env(cache), capture_output=True,
                              text=True, timeout=600)
    assert exported.returncode == 0, exported.stderr[-3000:]
    import jax
    from segzero_jax.models.qwen2_5_vl import load_hf
    _, back = load_hf(export)
    back = jax.tree.leaves(back)
    assert len(back) == len(want)
    for a, b in zip(back, want):
        np.testing.assert_array_equal(np.asarray(a), b)

    resumed = str(tmp_path / "resumed")
    env = _env(cache)
    # 1. SIGTERM after the first checkpoint: saves where it is and exits cleanly
    proc = subprocess.Popen(_cmd(resumed, data_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, resumed, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    # 2. resume, then SIGKILL after the next checkpoint (possibly mid-save)
    proc = subprocess.Popen(_cmd(resumed, data_dir), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = [int(d) for d in os.listdir(os.path.join(resumed, "checkpoints")) if d.isdigit()]
    if max(first) < STEPS:
        _wait_for_checkpoint(proc, resumed, max(first) + 1)
        proc.kill()
    proc.communicate(timeout=300)
    # 3. resume to the end
    last = _run(resumed, data_dir, cache)
    assert last.returncode == 0, last.stderr[-3000:]
    got = _final_params(resumed)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_bad_inputs_are_one_line(tmp_path, data_dir):
    cache = str(tmp_path / "jax_cache")
    bad = _run(str(tmp_path / "w"), data_dir, cache, extra=["--config.rl.update_batch_size=3"])
    assert bad.returncode != 0
    assert "config.rl.update_batch_size: 3 does not divide the 2 prompts" in bad.stderr
    assert "Traceback" not in bad.stderr
    missing = _run(str(tmp_path / "w2"), data_dir, cache,
                   extra=[f"--config.model.policy_checkpoint={tmp_path}/no_such_dir"])
    assert missing.returncode != 0 and "no_such_dir does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
