"""Multi-host start-up: `jax.distributed.initialize` with explicit or auto-detected peers."""

from __future__ import annotations

from typing import Optional

import jax


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None,
                           cpu_collectives: str = "gloo",
                           initialization_timeout: int = 300) -> None:
    """Connects this process to its peers. Idempotent; single-process runs need no call.

    On TPU pods and SLURM/Open MPI GPU clusters the arguments are detected by JAX. On CPU
    hosts (tests, laptops) cross-process collectives go through `cpu_collectives`. A peer that
    has not joined within `initialization_timeout` seconds makes this raise instead of hang.
    """
    if jax.distributed.is_initialized():
        return
    if cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=initialization_timeout)
