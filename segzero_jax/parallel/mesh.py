"""Device mesh over the physical axes ("data", "fsdp", "tensor").

`mesh_shape` gives one size per axis; a single -1 takes the remaining devices. With
`dcn_mesh_shape` (multi-slice TPU or multi-node GPU) the mesh is built so that the DCN axes
span slices/hosts and the ICI axes stay inside one (`mesh_utils.create_hybrid_device_mesh`).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(mesh_shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Replaces a single -1 in `mesh_shape` so that the product equals `num_devices`."""
    shape = [int(s) for s in mesh_shape]
    if shape.count(-1) > 1:
        raise ValueError(f"mesh_shape {tuple(shape)}: at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise ValueError(f"mesh_shape {tuple(shape)}: sizes must be positive or -1")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if num_devices % known:
            raise ValueError(f"mesh_shape {tuple(shape)} does not divide {num_devices} devices")
        shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh_shape {tuple(shape)} needs {math.prod(shape)} devices, "
                         f"{num_devices} are available")
    return tuple(shape)


def make_mesh(mesh_shape: Sequence[int] = (-1, 1, 1),
              axis_names: Sequence[str] = MESH_AXES,
              dcn_mesh_shape: Optional[Sequence[int]] = None,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """Builds a `Mesh` with named axes; see the module docstring for the shape rules."""
    devices = list(jax.devices() if devices is None else devices)
    if len(mesh_shape) != len(axis_names):
        raise ValueError(f"mesh_shape {tuple(mesh_shape)} has {len(mesh_shape)} sizes for "
                         f"axes {tuple(axis_names)}")
    if dcn_mesh_shape is None:
        shape = resolve_mesh_shape(mesh_shape, len(devices))
        try:
            grid = mesh_utils.create_device_mesh(shape, devices=devices)
        except (ValueError, NotImplementedError, AssertionError):
            grid = np.asarray(devices).reshape(shape)
    else:
        dcn = tuple(int(s) for s in dcn_mesh_shape)
        if len(dcn) != len(axis_names) or min(dcn) < 1 or len(devices) % math.prod(dcn):
            raise ValueError(f"dcn_mesh_shape {dcn} must give a positive size per axis "
                             f"{tuple(axis_names)} dividing {len(devices)} devices")
        ici = resolve_mesh_shape(mesh_shape, len(devices) // math.prod(dcn))
        # Multi-slice TPU devices know their slice; elsewhere each process (host) is one granule.
        slices = {getattr(d, "slice_index", None) for d in devices}
        by_process = None in slices or len(slices) != math.prod(dcn)
        grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices=devices,
                                                    process_is_granule=by_process)
    return Mesh(grid, tuple(axis_names))
