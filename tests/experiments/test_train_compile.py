"""`experiments.train --compile_only`: the real GRPO step compiled ahead of time from abstract
inputs, for this host's 8 simulated devices and for a TPU v5p slice (libtpu, no TPU)."""

import json
import os

import pytest

from tests.experiments.scripts import ROOT, run_module

LIBTPU = os.path.join(ROOT, ".cache", "libtpu")   # installed by tests/run.sh

# The tiny default at short lengths: 8 prompts x 2 samples, 56^2 images (4 image tokens).
SMALL = dict(batch_size=8, max_prompt_length=24, image_size=56)
SMALL_RL = dict(group_size=2, max_response_length=6, micro_batch_size=8, update_batch_size=8)


def _small_config(**rl):
    from experiments.configs import default
    config = default.get_config()
    config.data.update(SMALL)
    config.rl.update(dict(SMALL_RL, **rl))
    return config


def _json_line(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_tiny_default_compiles_for_host_devices(capsys):
    from experiments.train_compile import compile_only
    assert compile_only(_small_config(), "", 1) == 0
    out = capsys.readouterr().out
    row = _json_line(out)
    assert row["devices"] == 8 and row["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
    assert row["rows"] == 16 and row["response_len"] == 6 and row["reference_policy"] is True
    parts = row["arguments_per_device"]
    # params, AdamW's two float32 moments and the reference copy are the program's arguments
    assert parts["optimizer_state"] == pytest.approx(2 * parts["params"], rel=1e-3)
    assert parts["reference_params"] == parts["params"]
    assert row["argument_bytes"] >= sum(parts.values())
    # the donated state is updated in place; the step needs working memory beyond its arguments
    assert row["alias_bytes"] >= parts["params"] + parts["optimizer_state"]
    assert row["peak_bytes"] > row["argument_bytes"] > 0 and row["temp_bytes"] > 0
    assert row["fits"] is True and row["capacity_source"] == "host RAM / 8 CPU devices"
    assert "total" in out and "fits: True" in out


@pytest.mark.slow
def test_a_step_that_does_not_fit_exits_non_zero(capsys):
    """Without a reference policy, against 1 MiB per device: exit code 1, the figures and what to change."""
    from experiments.train_compile import compile_only
    assert compile_only(_small_config(kl_coef=0.0), "", 1, capacity_gib=2**-10) == 1
    captured = capsys.readouterr()
    row = _json_line(captured.out)
    assert row["fits"] is False and row["capacity_source"] == "given"
    assert row["reference_policy"] is False and row["arguments_per_device"]["reference_params"] == 0
    assert "error: the train step does not fit on local" in captured.err
    assert f"{row['peak_bytes'] / 2**30:.2f} GiB per device, 0.00 GiB available" in captured.err
    assert "config.mesh.shape" in captured.err and "rl.micro_batch_size" in captured.err


def test_bad_mesh_and_topology_are_named(capsys):
    from experiments.train_compile import compile_only
    config = _small_config()
    config.mesh.shape = (3, -1, 1)
    assert compile_only(config, "", 1) == 2
    assert "config.mesh.shape=(3, -1, 1) over 8 devices" in capsys.readouterr().err
    assert compile_only(_small_config(), "", 2) == 2
    assert "num_slices=2 needs a TPU topology" in capsys.readouterr().err
    assert compile_only(_small_config(), "gpu:a100", 1) == 2
    assert "the GPU targets are gpu:h100, gpu:h200" in capsys.readouterr().err
    assert compile_only(_small_config(), "v9z:1x1", 1) == 2   # unknown to libtpu, or no libtpu here
    assert "topology 'v9z:1x1': cannot describe this TPU topology" in capsys.readouterr().err


@pytest.mark.aot
@pytest.mark.slow
def test_tiny_step_on_a_v5p_slice_from_the_command_line():
    """`python -m experiments.train --compile_only --topology=v5p:2x2x1` on the tiny preset,
    FSDP over the slice's 4 chips, without a reference policy."""
    if not os.path.isdir(os.path.join(LIBTPU, "libtpu")):
        pytest.skip(f"libtpu is not importable from {LIBTPU} (`bash tests/run.sh` installs it there)")
    overrides = [f"--config.data.{k}={v}" for k, v in SMALL.items()]
    overrides += [f"--config.rl.{k}={v}" for k, v in SMALL_RL.items()]
    proc = run_module("experiments.train", "--config=experiments/configs/default.py", "--compile_only",
                      "--topology=v5p:2x2x1", "--config.mesh.shape=(1,-1,1)", "--config.rl.kl_coef=0",
                      *overrides, pythonpath=LIBTPU, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = _json_line(proc.stdout)
    assert row["device_kind"].startswith("TPU v5") and row["devices"] == 4
    assert row["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1} and row["attention"] == "tpu_auto"
    assert row["capacity_gib"] == 95 and row["fits"] is True
    assert row["reference_policy"] is False and row["arguments_per_device"]["reference_params"] == 0
    assert row["peak_bytes"] > row["argument_bytes"] >= sum(row["arguments_per_device"].values())
    assert "device memory" in proc.stdout and "TPU v5 HBM" in proc.stdout


@pytest.mark.slow
def test_a_compiler_out_of_memory_is_reported_with_the_arguments(monkeypatch, capsys):
    """A TPU compile that runs out of HBM raises; compile_only turns it into exit code 1 with the
    compiler's figure, the per-device arguments and the settings that lower the need."""
    from experiments import train_compile as tc

    message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
               "(134.49G) exceeds available HBM (95.74G).")

    def fail(work, mesh, rules):
        raise RuntimeError(message)

    monkeypatch.setattr(tc, "lower_and_compile", fail)
    assert tc.is_out_of_memory(RuntimeError(message)) and not tc.is_out_of_memory(RuntimeError("shape mismatch"))
    assert tc.compile_only(_small_config(), "", 1) == 1
    captured = capsys.readouterr()
    row = _json_line(captured.out)
    assert row["fits"] is False and row["compiler_error"] == message and "peak_bytes" not in row
    gib = row["arguments_per_device"]["optimizer_state"] / 2**30
    assert "the compiler ran out of device memory (arguments per device: params" in captured.err
    assert f"optimizer state {gib:.2f} GiB" in captured.err and "(134.49G) exceeds available HBM" in captured.err
    assert "rl.kl_coef=0 (no reference policy)" in captured.err and "model.remat_policy='full'" in captured.err

    monkeypatch.setattr(tc, "lower_and_compile", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):   # other compile errors are not hidden
        tc.compile_only(_small_config(), "", 1)
