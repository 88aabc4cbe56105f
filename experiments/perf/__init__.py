"""Measurement tools: benchmarks against the reference implementations, ahead-of-time compiles for
TPU slices and GPUs without the hardware, the XLA:GPU kernel census, profile summaries and the
one-call GPU acceptance run (`gpu_check.sh`). Each is `python -m experiments.perf.NAME`; the
figures they produced are logged in docs/performance.md."""
