"""Per-chip figures of the accelerators the ahead-of-time compiles target, by JAX `device_kind`:
memory (GiB), HBM bandwidth (GB/s) and dense bf16 peak (TFLOP/s). Public TPU specifications; the
GPUs' from `experiments.perf.gpu_targets`. No flags here: `experiments.train_compile` and
`experiments.perf.aot_compile` both read it."""

from __future__ import annotations

from experiments.perf.gpu_targets import GPU_TARGETS, card_figures

HBM_GIB = {"TPU v4": 32, "TPU v5 lite": 16, "TPU v5": 95, "TPU v5p": 95, "TPU v6 lite": 32, "TPU7x": 192}
PEAK_BF16_TFLOPS = {"TPU v4": 275, "TPU v5 lite": 197, "TPU v5": 459, "TPU v5p": 459, "TPU v6 lite": 918,
                    "TPU7x": 2307}
HBM_GBPS = {"TPU v4": 1228, "TPU v5 lite": 819, "TPU v5": 2765, "TPU v5p": 2765, "TPU v6 lite": 1640,
            "TPU7x": 7380}
for _kind, _gib, _gbps, _peak in map(card_figures, GPU_TARGETS):
    HBM_GIB[_kind], HBM_GBPS[_kind], PEAK_BF16_TFLOPS[_kind] = _gib, _gbps, _peak
