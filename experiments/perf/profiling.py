"""`--profile_dir` for the benchmark scripts: a `jax.profiler` trace of a few calls of one compiled
function and the optimised HLO it ran, the two inputs of `experiments.perf.profile_summary` (the HLO's
fusion names and `op_name` metadata map kernels back to model code). Defined here once: absl
flags are global, and every benchmark imports this module."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

from absl import flags

PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", "", "if set: a jax.profiler trace of two calls of the timed function and its "
    "optimised HLO (NAME.hlo.txt) go here; `python -m experiments.perf.profile_summary --trace=DIR` reads them")


def profile(call: Callable[[], Any], compiled: Any, name: str, calls: int = 2) -> None:
    """Traces `calls` runs of `call()` (which runs `compiled`, a `jax.stages.Compiled`) into
    `--profile_dir`, with `compiled`'s HLO as `NAME.hlo.txt`; does nothing without the flag."""
    directory = PROFILE_DIR.value
    if not directory:
        return
    import jax

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"{name}.hlo.txt"), "w") as f:
        f.write(compiled.as_text())
    try:
        with jax.profiler.trace(directory):
            for _ in range(calls):
                jax.block_until_ready(call())
    except RuntimeError as e:   # a profiler that cannot start (e.g. no CUPTI) costs the trace, not the timings
        print(f"profile of {name} failed, timings kept: {str(e).splitlines()[0][:300]}", file=sys.stderr)
