"""Weight-file readers: bfloat16 kept, damaged or foreign files named, nothing unpickled beyond data."""

import os

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from segzero_jax.models.tensor_files import (WeightFileError, read_safetensors,
                                             read_torch_state_dict)


def test_safetensors_bfloat16_and_float32_read_by_the_reference_writer(tmp_path):
    want = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.arange(5, dtype=torch.float32)}
    save_file(want, str(tmp_path / "w.safetensors"))
    got = read_safetensors(str(tmp_path / "w.safetensors"))
    assert got["a"].dtype == ml_dtypes.bfloat16 and got["b"].dtype == np.float32
    np.testing.assert_array_equal(got["a"].astype(np.float32), want["a"].float().numpy())
    np.testing.assert_array_equal(got["b"], want["b"].numpy())


def test_torch_state_dict_plain_or_under_model(tmp_path):
    sd = {"w": torch.randn(2, 3).to(torch.bfloat16), "step": 7}
    torch.save({"model": sd, "optimizer": {}}, tmp_path / "a.pt")
    torch.save(sd, tmp_path / "b.pt")
    for name in ("a.pt", "b.pt"):
        got = read_torch_state_dict(str(tmp_path / name))
        assert list(got) == ["w"] and got["w"].dtype == np.float32
        np.testing.assert_array_equal(got["w"], sd["w"].float().numpy())


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch payload_ran",))


def test_damaged_foreign_and_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"w": torch.randn(64, 64), "x": _Payload()}, "evil.pt")
    with pytest.raises(WeightFileError, match="evil.pt: not a checkpoint of tensors.*[Uu]nsupported (GLOBAL|global)"):
        read_torch_state_dict("evil.pt")
    assert not (tmp_path / "payload_ran").exists()

    torch.save({"w": torch.randn(64, 64)}, "cut.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "cut.pt").read_bytes()[:-2000])
    with pytest.raises(WeightFileError, match="cut.pt: not a readable torch checkpoint"):
        read_torch_state_dict("cut.pt")

    torch.save(torch.randn(3), "tensor.pt")
    with pytest.raises(WeightFileError, match="tensor.pt: expected a state dict"):
        read_torch_state_dict("tensor.pt")

    save_file({"w": torch.randn(64, 64)}, "cut.safetensors")
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "cut.safetensors").read_bytes()[:-100])
    with pytest.raises(WeightFileError, match="cut.safetensors: not a readable safetensors file"):
        read_safetensors("cut.safetensors")

    for reader, name in ((read_safetensors, "none.safetensors"), (read_torch_state_dict, "none.pt")):
        with pytest.raises(FileNotFoundError, match=name):
            reader(name)
