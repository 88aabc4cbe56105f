"""Orbax round trips, including a restore straight into a different sharding."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from segzero_jax import checkpoint
from segzero_jax.parallel import make_mesh


def _tree():
    return {"layer": {"kernel": np.arange(64, dtype=np.float32).reshape(8, 8),
                      "bias": np.linspace(-1, 1, 8).astype(np.float32)},
            "embed": np.arange(32, dtype=np.int32).reshape(4, 8).astype(jnp.bfloat16)}


def test_round_trip_reshards(tmp_path):
    mesh = make_mesh((2, 2, 2))
    src = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, PartitionSpec())), _tree())
    src["layer"]["kernel"] = jax.device_put(_tree()["layer"]["kernel"],
                                            NamedSharding(mesh, PartitionSpec("fsdp", "tensor")))
    checkpoint.save_params(str(tmp_path / "p"), src)

    abstract = checkpoint.abstract_params(str(tmp_path / "p"))
    assert abstract["layer"]["kernel"].shape == (8, 8)
    assert abstract["embed"].dtype == jnp.bfloat16

    target = NamedSharding(mesh, PartitionSpec(None, ("data", "fsdp")))
    restored = checkpoint.restore_params(
        str(tmp_path / "p"),
        lambda tree: jax.tree.map(lambda a: target if a.ndim == 2 else
                                  NamedSharding(mesh, PartitionSpec()), tree))
    assert restored["layer"]["kernel"].sharding == target
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a, np.float32),
                                                            np.asarray(b, np.float32)),
                 restored, _tree())


def test_default_restore_is_single_device(tmp_path):
    checkpoint.save_params(str(tmp_path / "p"), _tree())
    restored = checkpoint.restore_params(str(tmp_path / "p"))
    assert restored["layer"]["bias"].sharding.device_set == {jax.devices()[0]}


def test_refuses_overwrite_and_names_missing_paths(tmp_path):
    checkpoint.save_params(str(tmp_path / "p"), _tree())
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        checkpoint.save_params(str(tmp_path / "p"), _tree())
    with pytest.raises(FileNotFoundError, match="nowhere"):
        checkpoint.restore_params(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        checkpoint.restore_model(str(tmp_path))


def test_damaged_or_foreign_directories_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="empty: "):
        checkpoint.restore_params(str(tmp_path / "empty"))
    path = tmp_path / "p"
    checkpoint.save_params(str(path), {"w": np.random.RandomState(0).rand(256, 256).astype(np.float32)})
    chunks = [f for f in path.rglob("*") if f.is_file() and f.parent.name == "d"]   # OCDBT data files
    cut = lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    cut(max(chunks, key=lambda f: f.stat().st_size))          # the arrays' bytes
    with pytest.raises(checkpoint.CheckpointError, match=f"{path}: reading the arrays failed"):
        checkpoint.restore_params(str(path))
    for f in chunks:                                            # the tree's metadata too
        cut(f)
    with pytest.raises(checkpoint.CheckpointError, match=f"{path}: "):
        checkpoint.restore_params(str(path))


@dataclasses.dataclass
class _Config:
    width: int = 8
    name: str = "tiny"


def test_model_directory(tmp_path):
    checkpoint.save_model(str(tmp_path / "m"), "sam2", _Config(), _tree())
    kind, config, params = checkpoint.restore_model(str(tmp_path / "m"), expected_kind="sam2")
    assert (kind, config) == ("sam2", {"width": 8, "name": "tiny"})
    np.testing.assert_array_equal(np.asarray(params["layer"]["kernel"]), _tree()["layer"]["kernel"])
    with pytest.raises(ValueError, match="expected 'qwen2_5_vl'"):
        checkpoint.restore_model(str(tmp_path / "m"), expected_kind="qwen2_5_vl")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="'kind' and 'config'"):
        checkpoint.load_model_config(str(tmp_path / "bad"))


def test_a_bad_config_is_named_before_any_weight_is_read(tmp_path):
    from segzero_jax.config_io import to_dict
    from segzero_jax.models import sam2
    model = tmp_path / "sam2_model"
    model.mkdir()
    fields = to_dict(sam2.get_preset("hiera_tiny"))
    fields["image_size"] = "1024"
    (model / "config.json").write_text(json.dumps({"kind": "sam2", "config": fields}))
    # no params/ directory at all: the config's error comes first
    with pytest.raises(ValueError, match=f"{model}/config.json.image_size: expected an integer"):
        checkpoint.restore_sam2(str(model))
    with pytest.raises(ValueError, match="expected 'qwen2_5_vl'"):
        checkpoint.restore_policy(str(model))
