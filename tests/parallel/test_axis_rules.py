"""Every logical axis name the models give their params has a rule in DEFAULT_RULES, so no
param is replicated by accident of a missing name."""

import flax.linen as nn
import jax

from segzero_jax.models import qwen2_5_vl, sam2
from segzero_jax.parallel import DEFAULT_RULES


def _logical_names(boxed_tree) -> set:
    names = set()
    leaves = jax.tree_util.tree_leaves_with_path(
        boxed_tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))
    for path, leaf in leaves:
        assert isinstance(leaf, nn.Partitioned), f"param without logical axes: {jax.tree_util.keystr(path)}"
        names.update(n for n in leaf.names if n is not None)
    return names


def test_qwen_and_sam2_param_axes_all_have_rules():
    qwen = jax.eval_shape(lambda r: qwen2_5_vl.init_params(qwen2_5_vl.preset("tiny"), r),
                          jax.random.key(0))
    sam = sam2.abstract_params(sam2.get_preset("test_tiny"))
    used = _logical_names(qwen) | _logical_names(sam)
    ruled = {name for name, _ in DEFAULT_RULES}
    assert used, "no logical axes found"
    assert used <= ruled, f"logical axes without a rule: {sorted(used - ruled)}"


def test_cache_axes_have_rules():
    axes = qwen2_5_vl.cache_logical_axes(qwen2_5_vl.preset("tiny"))
    used = {n for spec in axes.values() for n in spec}
    assert used <= {name for name, _ in DEFAULT_RULES}


def test_named_sharding_follows_rules_and_replicates_indivisible_dims():
    from jax.sharding import PartitionSpec

    from segzero_jax.parallel import make_mesh, named_sharding
    mesh = make_mesh((2, 2, 2))
    assert named_sharding(("act_batch", None), (8, 3), mesh).spec == PartitionSpec(("data", "fsdp"), None)
    assert named_sharding(("act_batch", "act_heads"), (3, 4), mesh).spec == PartitionSpec(None, "tensor")
    cache = named_sharding(qwen2_5_vl.cache_logical_axes(qwen2_5_vl.preset("tiny"))["k"], (2, 4, 16, 2, 16), mesh)
    assert cache.spec == PartitionSpec(None, ("data", "fsdp"), None, "tensor", None)
