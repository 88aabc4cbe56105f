"""Image resizing with PyTorch's exact sampling rules, as separable weight matrices.

A resize along one axis is a matrix R float[out, in] built on the host (numpy, float64 then
cast), so a 2-D resize is `einsum("yY,...YXC,xX->...yxC", Ry, x, Rx)`: exact, jit-friendly for
static sizes, and a pair of matmuls on an accelerator. Rules reproduced (align_corners=False):

  * "bilinear"        `F.interpolate(mode="bilinear")`: src = max(s (i + 0.5) - 0.5, 0), two taps,
                      upper index clamped; s = in / out.
  * "bilinear_aa"     `F.interpolate(mode="bilinear", antialias=True)` (= torchvision `Resize` on
                      tensors): triangle filter of support max(s, 1) around centre s (i + 0.5),
                      taps clipped to the image and weights renormalised.
  * "bicubic"         `F.interpolate(mode="bicubic")`: src = s (i + 0.5) - 0.5 (unclamped), Keys
                      cubic with A = -0.75 on taps floor(src) - 1 .. + 2, indices clamped.
  * "nearest"         `F.interpolate(mode="nearest")`: src = floor(i s).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _bilinear(n_in: int, n_out: int) -> np.ndarray:
    s = np.float32(n_in) / np.float32(n_out)  # torch computes the source index in float32
    r = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max(s * (np.float32(i) + np.float32(0.5)) - np.float32(0.5), np.float32(0.0))
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        l1 = float(src - np.float32(i0))
        r[i, i0] += 1.0 - l1
        r[i, i1] += l1
    return r


def _bilinear_aa(n_in: int, n_out: int) -> np.ndarray:
    s = n_in / n_out
    support = s if s >= 1.0 else 1.0
    inv = 1.0 / s if s >= 1.0 else 1.0
    r = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = s * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        w = np.maximum(0.0, 1.0 - np.abs((j - center + 0.5) * inv))
        total = w.sum()
        r[i, lo:hi] = w / total if total != 0 else w
    return r


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


def _bicubic(n_in: int, n_out: int) -> np.ndarray:
    s = np.float32(n_in) / np.float32(n_out)
    r = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = s * (np.float32(i) + np.float32(0.5)) - np.float32(0.5)
        i0 = int(np.floor(src))
        for k, w in enumerate(_cubic_weights(float(src - np.float32(i0)))):
            r[i, min(max(i0 - 1 + k, 0), n_in - 1)] += w
    return r


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    s = n_in / n_out
    r = np.zeros((n_out, n_in))
    for i in range(n_out):
        r[i, min(int(np.floor(i * s)), n_in - 1)] = 1.0
    return r


RESIZE_KERNELS: dict[str, Callable[[int, int], np.ndarray]] = {
    "bilinear": _bilinear,
    "bilinear_aa": _bilinear_aa,
    "bicubic": _bicubic,
    "nearest": _nearest,
}


@functools.lru_cache(maxsize=64)
def resize_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    """R float32[n_out, n_in] such that `R @ v` resizes v along one axis like PyTorch."""
    if method not in RESIZE_KERNELS:
        raise ValueError(f"resize method {method!r} is not one of {sorted(RESIZE_KERNELS)}")
    if n_in <= 0 or n_out <= 0:
        raise ValueError(f"resize sizes must be positive, got {n_in} -> {n_out}")
    return RESIZE_KERNELS[method](n_in, n_out).astype(np.float32)


def resize_hwc(x: jax.Array, out_hw: tuple[int, int], method: str) -> jax.Array:
    """Resizes float[..., H, W, C] to float[..., h, w, C] (computed in float32)."""
    h_in, w_in = x.shape[-3], x.shape[-2]
    ry = jnp.asarray(resize_matrix(h_in, int(out_hw[0]), method))
    rx = jnp.asarray(resize_matrix(w_in, int(out_hw[1]), method))
    x = x.astype(jnp.float32)
    y = jnp.einsum("yY,...YXC->...yXC", ry, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("xX,...yXC->...yxC", rx, y, precision=jax.lax.Precision.HIGHEST)


def resize_hw(x: jax.Array, out_hw: tuple[int, int], method: str) -> jax.Array:
    """Resizes float[..., H, W] to float[..., h, w] (computed in float32)."""
    return resize_hwc(x[..., None], out_hw, method)[..., 0]


def bilinear_matrix_traced(n_in: int, n_out: jax.Array, n_max: int) -> jax.Array:
    """`resize_matrix(n_in, n_out, "bilinear")` for an output size known only at run time:
    float32[n_max, n_in] whose rows >= n_out are zero (same float32 index arithmetic)."""
    s = jnp.float32(n_in) / jnp.asarray(n_out).astype(jnp.float32)
    i = jnp.arange(n_max, dtype=jnp.float32)
    src = jnp.maximum(s * (i + 0.5) - 0.5, 0.0)
    i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    i1 = jnp.minimum(i0 + 1, n_in - 1)
    l1 = src - i0.astype(jnp.float32)
    r = (jax.nn.one_hot(i0, n_in, dtype=jnp.float32) * (1.0 - l1)[:, None]
         + jax.nn.one_hot(i1, n_in, dtype=jnp.float32) * l1[:, None])
    return jnp.where((jnp.arange(n_max) < n_out)[:, None], r, 0.0)
