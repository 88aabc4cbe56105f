"""The rollout benchmark (ours with shared and copied prompt keys, transformers' sampling
generate) at a tiny shape, and the AOT compile of one rollout decode step on this host's
8 devices with and without shared prompt keys."""

import pytest

from tests.experiments.scripts import run_json

SIDES = ("shared", "copied", "transformers")


@pytest.mark.slow
def test_benchmark_sampler_tiny(tmp_path):
    b, n, m = 2, 2, 6
    row, out = run_json("experiments.perf.benchmark_sampler", "--preset=tiny", "--dtype=float32",
                        f"--prompts={b}", f"--group_size={n}", "--image_px=56", "--text_tokens=8",
                        f"--new_tokens={m}", "--warmup=0", "--iters=1", f"--json_out={tmp_path / 'r.json'}")
    # 56 px: 4x4 patches merge into 4 image tokens, between the two vision markers
    assert (row["prompts"], row["group_size"], row["new_tokens"], row["prompt_len"]) == (b, n, m, 8 + 4 + 2)
    for side in SIDES:
        r = row[side]
        assert r["rollout_s"] > r["prefill_s"] > 0 and r["peak_bytes"] >= 0
        assert r["tokens_per_s"] == pytest.approx(b * n * m / r["rollout_s"])
        assert r["decode_step_ms"] == pytest.approx((r["rollout_s"] - r["prefill_s"]) / (m - 1) * 1e3)
    for side in ("shared", "copied"):   # every row ran the whole budget: no stop id was drawn
        assert row[side]["num_steps"] == m - 1 and row[side]["xla_bytes"] > 0 and row[side]["compile_s"] > 0
    assert row["shared"]["prefill_s"] == row["copied"]["prefill_s"]   # one prefill program for both
    assert row["tokens_equal_shared_copied"] is True and row["token_agreement"] == 1.0
    for side in ("shared", "copied"):
        assert row[f"ratio_{side}_vs_transformers"] == pytest.approx(
            row[side]["tokens_per_s"] / row["transformers"]["tokens_per_s"])
    assert row["ratio_shared_vs_copied"] == pytest.approx(row["shared"]["tokens_per_s"] / row["copied"]["tokens_per_s"])
    header = next(line for line in out.splitlines() if "transformers" in line and "shared" in line)
    assert header.split() == list(SIDES)
    assert any(line.split()[:1] == ["tokens/s"] and len(line.split()) == 4 for line in out.splitlines())
    assert (tmp_path / "r.json").exists()


def test_benchmark_sampler_refuses_bad_flags():
    from tests.experiments.scripts import run_module
    for flag, words in (("--modes=shared,grouped", "--modes='shared,grouped'"), ("--image_px=50", "--image_px=50"),
                        ("--preset=13b", "--preset='13b' is not one of")):
        proc = run_module("experiments.perf.benchmark_sampler", "--preset=tiny", "--compare_hf=false", flag)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr[-2000:]


def _kv_bytes(layers, kv_heads, head_dim, slots_per_row, rows):
    """bf16 keys and values of every layer, plus int32 lengths and rope deltas per row."""
    return layers * 2 * slots_per_row * kv_heads * head_dim * 2 + rows * 2 * 4


@pytest.mark.aot
@pytest.mark.slow
def test_rollout_decode_step_on_local_mesh():
    b, n, p, m = 2, 4, 40, 8
    common = ("--work=rollout_decode", "--preset=tiny", "--mesh=2,2,2", "--noscan_layers", f"--batch={b}",
              f"--group_size={n}", f"--prompt_len={p}", f"--new_tokens={m}")
    shared = run_json("experiments.perf.aot_compile", *common, "--shared_prompt", devices=8)[0]
    copied = run_json("experiments.perf.aot_compile", *common, "--noshared_prompt", devices=8)[0]
    assert shared["rows"] == copied["rows"] == b * n and shared["devices"] == 8
    assert (shared["shared_prompt"], copied["shared_prompt"]) == (True, False)
    assert (shared["cache_capacity"], copied["cache_capacity"]) == (m, p + m)
    # tiny: 2 layers, 2 kv heads of 16; one prompt cache of B rows + B*n own rows, or B*n copies
    assert shared["kv_cache_bytes_global"] == _kv_bytes(2, 2, 16, b * p + b * n * m, b + b * n)
    assert copied["kv_cache_bytes_global"] == _kv_bytes(2, 2, 16, b * n * (p + m), b * n)
    for row in (shared, copied):
        assert row["alias_bytes"] > 0 and row["peak_bytes"] > row["argument_bytes"] > 0   # own cache donated
        assert row["bytes_accessed"] > row["argument_bytes"] and row["ms_bytes_accessed"] is None
    # the same scores and values either way: n queries per prompt key, each sample's own keys
    assert shared["gflops_per_device"] == pytest.approx(copied["gflops_per_device"], rel=1e-6)
