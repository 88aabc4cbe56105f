"""Host-side (numpy) index arrays that give the vision tower static shapes.

The window reordering of Qwen2.5-VL depends on the image grids, which are known on the host.
`vision_layout(grid_thw, vision_config)` turns the grid tuple into integer arrays; the tower
takes them as ordinary (traced) inputs, so one compiled function serves every batch with the
same grids (jit specialises on the array shapes only).

Patches arrive in the processor's order (per image and frame, 2x2 merge blocks row-major).
The tower works in *window order*: merge blocks grouped into windows of
`window_size / patch_size / spatial_merge_size` blocks per side (the last row/column of
windows may be partial when the grid is not a multiple), windows row-major per frame.

When every image has the same grid (Seg-Zero's fixed 840x840 frame), the arrays describe one
image and the tower runs the images as a batch `[I, L, D]` that shards over the data axes like
any other batch; otherwise they describe all images concatenated (I = 1).

Arrays (I image slots, L patches per slot, M = L / merge^2 merged tokens, G segments, S
segment capacity):
  image_slots     int32[I]      0..I-1; only its shape is used (the batch of the tower)
  patch_perm      int32[L]      window order <- processor order (x_win = x[patch_perm])
  pos_hw          int32[L, 2]   (row, col) patch coordinates in window order (2-D rotary)
  window_gather   int32[Gw, Sw] window-ordered token index per (window, slot); padding -> 0
  window_lengths  int32[Gw]     valid slots per window
  window_scatter  int32[L]      flat (window, slot) of each token (undoes the gather)
  full_gather / full_lengths / full_scatter: the same for whole frames (full attention)
  merge_inverse   int32[M]      processor order <- window order for merged tokens
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from segzero_jax.models.qwen2_5_vl.config import VisionConfig

LAYOUT_KEYS = ("image_slots", "patch_perm", "pos_hw", "window_gather", "window_lengths", "window_scatter",
               "full_gather", "full_lengths", "full_scatter", "merge_inverse")


def grid_tuple(grid_thw) -> tuple[tuple[int, int, int], ...]:
    """A hashable host copy of `image_grid_thw` (raises if it is a traced value)."""
    try:
        arr = np.asarray(grid_thw)
    except Exception as e:  # jax raises TracerArrayConversionError under jit
        raise ValueError("image_grid_thw must be a host value (numpy/tuple) for the vision tower; "
                         "under jit pass a precomputed `vision_layout(...)` instead") from e
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"image_grid_thw must have shape [num_images, 3], got {arr.shape}")
    return tuple(tuple(int(v) for v in row) for row in arr)


def _segments(lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """gather [G, S], lengths [G], scatter [sum(lengths)] for consecutive segments."""
    lengths = np.asarray(lengths, np.int64)
    s = int(lengths.max())
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    slot = np.arange(s)[None, :]
    gather = np.where(slot < lengths[:, None], starts[:, None] + slot, 0)
    scatter = np.concatenate([i * s + np.arange(n) for i, n in enumerate(lengths)])
    return gather.astype(np.int32), lengths.astype(np.int32), scatter.astype(np.int32)


def vision_layout(grid_thw, cfg: VisionConfig) -> dict[str, np.ndarray]:
    """Index arrays for the vision tower (see the module docstring)."""
    grids = grid_tuple(grid_thw)
    slots = 1
    if len(grids) > 1 and len(set(grids)) == 1:
        grids, slots = grids[:1], len(grids)
    m = cfg.spatial_merge_size
    unit = m * m
    win = cfg.window_size // m // cfg.patch_size
    merged_perm, window_lens, frame_lens, pos = [], [], [], []
    offset = 0
    for i, (t, h, w) in enumerate(grids):
        if min(t, h, w) <= 0 or h % m or w % m:
            raise ValueError(f"image_grid_thw[{i}] = {(t, h, w)}: h and w must be positive "
                             f"multiples of spatial_merge_size {m}")
        lh, lw = h // m, w // m
        index = np.arange(t * lh * lw).reshape(t, lh, lw) + offset
        for f in range(t):
            for r in range(0, lh, win):
                for c in range(0, lw, win):
                    block = index[f, r:r + win, c:c + win].reshape(-1)
                    merged_perm.append(block)
                    window_lens.append(block.size * unit)
            frame_lens.append(h * w)
        rows = np.arange(h)[:, None].repeat(w, 1).reshape(lh, m, lw, m).transpose(0, 2, 1, 3).reshape(-1)
        cols = np.arange(w)[None, :].repeat(h, 0).reshape(lh, m, lw, m).transpose(0, 2, 1, 3).reshape(-1)
        pos.append(np.tile(np.stack([rows, cols], -1), (t, 1)))
        offset += t * lh * lw
    merged = np.concatenate(merged_perm)
    patch_perm = (merged[:, None] * unit + np.arange(unit)[None, :]).reshape(-1)
    wg, wl, ws = _segments(window_lens)
    fg, fl, fs = _segments(frame_lens)
    return {
        "image_slots": np.arange(slots, dtype=np.int32),
        "patch_perm": patch_perm.astype(np.int32),
        "pos_hw": np.concatenate(pos)[patch_perm].astype(np.int32),
        "window_gather": wg, "window_lengths": wl, "window_scatter": ws,
        "full_gather": fg, "full_lengths": fl, "full_scatter": fs,
        "merge_inverse": np.argsort(merged).astype(np.int32),
    }
