"""Logical axis names -> mesh axes (MaxText style) and shape-first sharded initialisation.

Model code names every param dim and constrains activations with logical names; these
rules, kept in the config, map them onto the physical mesh axes ("data", "fsdp", "tensor").

Logical names used by the models:
  params:      embed, mlp, heads, kv_heads, head_dim, vocab, layers, norm,
               conv_in, conv_out, conv_spatial, conv_height, conv_width (convolutions)
  activations: act_batch, act_length, act_embed, act_heads, act_mlp, act_vocab
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

LogicalRules = Sequence[tuple[str, Any]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("act_batch", ("data", "fsdp")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("vocab", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    ("conv_in", None),
    ("conv_out", None),
    ("conv_spatial", None),
    ("conv_height", None),
    ("conv_width", None),
)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Any) -> PartitionSpec:
    """Drops from `spec` the mesh axes of any dim they do not divide (e.g. 2 kv heads over
    tensor=4, a batch of 3 over data=2), and axes the mesh does not have: that dim is
    replicated instead of failing at placement time. `mesh` may be abstract."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    fitted = []
    for dim, axes in zip(shape, spec):
        names = tuple(a for a in ((axes,) if isinstance(axes, str) else tuple(axes or ()))
                      if a in mesh.axis_names)
        size = math.prod(mesh.shape[a] for a in names)
        keep = names and dim % size == 0
        fitted.append((names[0] if len(names) == 1 else names) if keep else None)
    return PartitionSpec(*fitted)


def _fit_to_shape(sharding: NamedSharding, shape: tuple[int, ...]) -> NamedSharding:
    return NamedSharding(sharding.mesh, fit_spec(sharding.spec, shape, sharding.mesh))


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Any:
    """NamedShardings for a tree of (possibly `nn.Partitioned`-boxed) abstract values.

    Dims that their mesh axes do not divide are replicated (see `_fit_to_shape`).
    """
    specs = nn.get_partition_spec(abstract_tree)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, tuple(rules))
    return jax.tree.map(lambda sh, leaf: _fit_to_shape(sh, leaf.shape), shardings,
                        nn.meta.unbox(abstract_tree))


def named_sharding(logical_axes: Sequence[Optional[str]], shape: Sequence[int], mesh: Mesh,
                   rules: LogicalRules = DEFAULT_RULES) -> NamedSharding:
    """The NamedSharding of one array from its logical axis names (e.g. ("act_batch", None) for
    a batch of rows); dims their mesh axes do not divide are replicated."""
    spec = nn.logical_to_mesh_axes(tuple(logical_axes), tuple(rules))
    return _fit_to_shape(NamedSharding(mesh, spec), tuple(shape))


def with_sharding_constraint(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
    """`segzero_jax.models.layers.constrain` under the parallel package's name."""
    from segzero_jax.models.layers import constrain
    return constrain(x, logical_axes)


def sharded_init(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES,
                 *args: Any) -> tuple[Any, Any]:
    """Runs `init_fn(*args)` straight into its sharded layout; returns (boxed tree, shardings).

    The tree is evaluated abstractly first, so no full copy ever lives on one device.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = logical_shardings(abstract, mesh, rules)
    with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
        tree = jax.jit(init_fn, out_shardings=shardings)(*args)
    return tree, shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
