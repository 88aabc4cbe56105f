"""Resize matrices reproduce torch.nn.functional.interpolate exactly (up and down sampling)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segzero_jax.models.sam2.resize import resize_hwc, resize_matrix

SIZES = [(7, 3), (3, 7), (64, 1024), (300, 1024), (1024, 257), (14, 64), (5, 5), (90, 256)]


METHODS = {"bilinear": dict(mode="bilinear", align_corners=False),
           "bilinear_aa": dict(mode="bilinear", align_corners=False, antialias=True),
           "bicubic": dict(mode="bicubic", align_corners=False),
           "nearest": dict(mode="nearest")}
CASES = [(m, n_in, n_out) for m in METHODS for n_in, n_out in SIZES
         if m != "nearest" or n_out % n_in == 0 or n_in % n_out == 0]


@pytest.mark.parity
@pytest.mark.parametrize("method,n_in,n_out", CASES)
def test_matrix_matches_torch_interpolate(method, n_in, n_out):
    kw = METHODS[method]
    x = torch.randn(1, 2, n_in, 3, generator=torch.Generator().manual_seed(n_in * 7 + n_out))
    want = F.interpolate(x, size=(n_out, 3), **kw).numpy()
    got = np.einsum("oi,bcij->bcoj", resize_matrix(n_in, n_out, method), x.numpy())
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parity
def test_two_dimensional_resize_matches_torch():
    x = torch.rand(1, 3, 37, 53, generator=torch.Generator().manual_seed(0))
    want = F.interpolate(x, size=(64, 40), mode="bilinear", align_corners=False, antialias=True)
    got = resize_hwc(x.numpy().transpose(0, 2, 3, 1), (64, 40), "bilinear_aa")
    np.testing.assert_allclose(np.asarray(got), want.numpy().transpose(0, 2, 3, 1), atol=2e-6)


def test_unknown_method_and_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="lanczos"):
        resize_matrix(4, 8, "lanczos")
    with pytest.raises(ValueError, match="positive"):
        resize_matrix(0, 8, "bilinear")
