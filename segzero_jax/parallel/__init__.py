"""Device mesh, logical-axis rules and multi-host start-up."""

from segzero_jax.parallel.mesh import MESH_AXES, make_mesh
from segzero_jax.parallel.sharding import (DEFAULT_RULES, logical_shardings, named_sharding,
                                           sharded_init, with_sharding_constraint)
from segzero_jax.parallel.multihost import initialize_distributed

__all__ = ["MESH_AXES", "make_mesh", "DEFAULT_RULES", "logical_shardings", "named_sharding", "sharded_init",
           "with_sharding_constraint", "initialize_distributed"]
