"""GPU descriptions for ahead-of-time compiles without the card (`experiments.perf.aot_compile
--topology=gpu:NAME`). No flags here, so tests and other scripts can import it."""

from __future__ import annotations

# Descriptions XLA compiles a GPU program from without the card (public SXM specifications:
# Hopper, compute capability 9.0, 132 SMs; memory size, bandwidth, L2 and dense bf16 peak per
# card). CUDA 13.0 and cuDNN 9.10 are the library versions the compiler may assume. The one
# source of these cards' figures: `experiments.perf.aot_compile`'s memory and roofline tables and the
# census's defaults read them here.
GPU_TARGETS = {
    "h100": dict(name="NVIDIA H100 80GB HBM3", memory_bytes=84_929_347_584, bandwidth_bps=3_352_320_000_000,
                 l2_bytes=52_428_800, peak_bf16_tflops=989),
    "h200": dict(name="NVIDIA H200", memory_bytes=150_754_820_096, bandwidth_bps=4_800_000_000_000,
                 l2_bytes=52_428_800, peak_bf16_tflops=989),
}


def card_figures(card: str) -> tuple[str, float, float, float]:
    """(JAX device_kind, memory GiB, bandwidth GB/s, dense bf16 peak TFLOP/s) of a target."""
    t = GPU_TARGETS[card]
    return t["name"], t["memory_bytes"] / 2**30, t["bandwidth_bps"] / 1e9, float(t["peak_bf16_tflops"])


def gpu_target_config(card: str) -> str:
    """The `GpuTargetConfig` text proto of a Hopper card in `GPU_TARGETS`."""
    t = GPU_TARGETS[card]
    return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: 233472
  threads_per_core_limit: 2048
  core_count: 132
  fpus_per_core: 128
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {t["bandwidth_bps"]}
  l2_cache_size: {t["l2_bytes"]}
  clock_rate_ghz: 1.98
  device_memory_size: {t["memory_bytes"]}
  shared_memory_per_block_optin: 232448
  cuda_compute_capability {{ major: 9 minor: 0 }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{ major: 9 minor: 10 }}
runtime_version {{ major: 13 minor: 0 }}
device_description_str: "{t["name"]}"
"""
