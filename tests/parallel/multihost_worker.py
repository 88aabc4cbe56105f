"""One process of the two-process CPU test: joins the cluster, builds a hybrid mesh, checks a
cross-host reduction and a globally sharded param init. Prints one JSON line."""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec  # noqa: E402

from segzero_jax.parallel import initialize_distributed, make_mesh  # noqa: E402


def main(port: int, process_id: int) -> None:
    initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                           initialization_timeout=90)
    mesh = make_mesh((1, 2, 2), dcn_mesh_shape=(2, 1, 1))
    # Each process owns one "data" row of the mesh: its local batch rows.
    sharding = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    local = np.arange(4, dtype=np.float32) + 4 * jax.process_index()
    global_x = jax.make_array_from_process_local_data(sharding, local, (8,))
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(global_x)
    rows = {d.process_index for d in mesh.devices[jax.process_index()].flat}
    print("RESULT " + json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                      "total": float(total), "row_processes": sorted(rows)}), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
