"""Model configs (frozen dataclasses) to and from JSON-ready dicts.

`from_dict` rebuilds nested dataclasses, turns JSON lists back into the tuples the fields
declare, and names any unknown field, so a stale or hand-edited config.json fails loudly.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import jax.numpy as jnp
import numpy as np


def _is_dtype(value: Any) -> bool:
    """True for numpy/JAX dtype objects and scalar types (jnp.float32, np.dtype("bfloat16"))."""
    if isinstance(value, np.dtype):
        return True
    if not isinstance(value, type) or value in (bool, int, float, complex, str):
        return False
    try:
        np.dtype(value)
    except TypeError:
        return False
    return True


def _jsonable(value: Any) -> Any:
    if _is_dtype(value):
        return np.dtype(value).name
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_jsonable(v) for v in value)
    return value


def to_dict(config: Any) -> dict:
    """A dataclass instance as plain dicts, lists and scalars (dtypes by name)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return _jsonable(dataclasses.asdict(config))


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value, where)
    if origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        inner = args[0] if args and (len(args) == 2 and args[1] is Ellipsis) else None
        if inner is not None:
            return tuple(_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        return tuple(value)
    if origin is typing.Union:
        for arg in typing.get_args(hint):
            if arg is not type(None) and (dataclasses.is_dataclass(arg) or typing.get_origin(arg) is tuple):
                return _convert(arg, value, where)
    return value


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Builds `cls` from `data`; unknown keys raise ValueError naming them and `where`."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown} for {cls.__name__}")
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    values = {}
    for k, v in data.items():
        if isinstance(v, str) and _is_dtype(defaults.get(k)):
            v = getattr(jnp, v)  # a dtype field stored by name
        values[k] = _convert(hints[k], v, f"{where}.{k}")
    return cls(**values)
