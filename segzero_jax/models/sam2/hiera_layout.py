"""Where x travels between Hiera's blocks: runs of identical blocks and their token layouts.

Host-side planning from the config alone (static Python, no arrays but the two layout changes),
used by the trunk (`hiera.Hiera`) and by the checkpoint converter (module names per run or block).

Runs. Consecutive identical blocks of one stage (same widths, window, no pooling) form a run
(`block_segments`); with `config.scan_blocks` a run of shape-preserving blocks is one `nn.scan`
module `segment_j` with params stacked on a leading "layers" axis, and a block that changes
width or pools is a module of its own; with `scan_blocks=False` every block is `block_i`.

Layouts. Norms, MLPs and projections act per token and global attention does not care about
token order, so x travels between blocks in whatever layout the next run wants
(`segment_layout`): partitioned into windows, float[B * nY * nX, ws, ws, D], wherever the
windows tile the map (layout = ws), else the map itself, float[B, Y, X, D] (layout = 0). A
q-pooling block pools inside each window, turning ws-windows into (ws/2)-windows, which are the
next stage's windows in SAM2's configs; a global block reads an image's windows side by side
as one sequence. x changes layout only where the window size does (or padding begins), and
each stage's output is un-partitioned once for the neck. Blocks that need padding partition
for themselves, as the reference does every block (`window_partition` zero-pads to a multiple
of the window size).
"""

from __future__ import annotations

from typing import NamedTuple

import einops
import jax
import jax.numpy as jnp

from segzero_jax.models.sam2.config import BlockSpec, Sam2Config


def block_segments(config: Sam2Config) -> list[tuple[int, int, BlockSpec]]:
    """Groups consecutive identical blocks of one stage: [(first block index, count, spec)]."""
    segments: list[tuple[int, int, BlockSpec]] = []
    for i, spec in enumerate(config.blocks):
        if segments and not spec.q_pool and segments[-1][2] == spec and i - 1 not in config.stage_ends:
            start, n, _ = segments[-1]
            segments[-1] = (start, n + 1, spec)
        else:
            segments.append((i, 1, spec))
    return segments


def segment_name(j: int) -> str:
    """The trunk's module of run j of blocks (`config.scan_blocks`)."""
    return f"segment_{j}"


def block_name(i: int) -> str:
    """The trunk's module of block i when blocks are not scanned."""
    return f"block_{i}"


def is_scanned(spec: BlockSpec) -> bool:
    """Shape-preserving blocks run under `nn.scan` (params stacked on a leading axis); a block
    that changes width or pools runs on its own (unstacked params)."""
    return spec.dim == spec.dim_out and not spec.q_pool


def pools_within_windows(ws: int, q_stride: tuple[int, int]) -> bool:
    """Whether 2-D pooling by `q_stride` splits ws x ws windows into whole, square windows."""
    return q_stride[0] == q_stride[1] and ws % q_stride[0] == 0


def segment_layout(spec: BlockSpec, hw: tuple[int, int], current: int, q_stride: tuple[int, int]) -> int:
    """The layout a run of `spec` blocks takes x in on a `hw` map when x arrives in `current`:
    the window size of a window layout, 0 for the map itself. Windowed blocks take their windows
    where they tile the map (and a pooling block's windows also split by the stride); global
    blocks keep x as it comes, unless they pool."""
    ws = spec.window_size
    if ws == 0:
        return 0 if spec.q_pool else current
    tiles = hw[0] % ws == 0 and hw[1] % ws == 0
    return ws if tiles and (not spec.q_pool or pools_within_windows(ws, q_stride)) else 0


class Run(NamedTuple):
    """A run of identical blocks (`block_segments`) and the layouts x crosses it in."""

    start: int                  # first block
    count: int
    spec: BlockSpec
    hw: tuple[int, int]         # the map it works on
    layout: int                 # the layout x arrives in (`segment_layout`)
    out_hw: tuple[int, int]     # the map it leaves (pooled by a q-pooling block)
    out_layout: int             # the layout x leaves in (ws/2 windows after pooling in windows)


def layout_plan(config: Sam2Config) -> list[Run]:
    """Each run of blocks with the map and layouts x enters and leaves it in."""
    side = config.image_size // 4
    hw, layout, plan = (side, side), 0, []
    for start, count, spec in block_segments(config):
        layout = segment_layout(spec, hw, layout, config.q_stride)
        out_hw, out_layout = hw, layout
        if spec.q_pool:
            out_hw = (hw[0] // config.q_stride[0], hw[1] // config.q_stride[1])
            out_layout = layout // config.q_stride[0]
        plan.append(Run(start, count, spec, hw, layout, out_hw, out_layout))
        hw, layout = out_hw, out_layout
    return plan


def to_layout(x: jax.Array, hw: tuple[int, int], current: int, want: int) -> jax.Array:
    """x on a `hw` map from layout `current` to layout `want` (window sizes; 0: the map)."""
    if current == want:
        return x
    if current:
        x = window_unpartition(x, current, hw, hw)
    if want:
        x, _ = window_partition(x, want)
    return x


def window_partition(x: jax.Array, ws: int) -> tuple[jax.Array, tuple[int, int]]:
    """float[B, Y, X, D] -> float[B * nY * nX, ws, ws, D] (zero-padded) and the padded size."""
    _, h, w, _ = x.shape
    ph, pw = (-h) % ws, (-w) % ws
    if ph or pw:
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)))
    windows = einops.rearrange(x, "b (ny y) (nx x) d -> (b ny nx) y x d", y=ws, x=ws)
    return windows, (h + ph, w + pw)


def window_unpartition(windows: jax.Array, ws: int, pad_hw: tuple[int, int],
                       hw: tuple[int, int]) -> jax.Array:
    """Inverse of `window_partition`, cropping the padding."""
    hp, wp = pad_hw
    x = einops.rearrange(windows, "(b ny nx) y x d -> b (ny y) (nx x) d", ny=hp // ws, nx=wp // ws)
    return x[:, : hw[0], : hw[1]]
