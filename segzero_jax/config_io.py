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


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _convert(hint: Any, value: Any, where: str) -> Any:
    """`value` (from JSON) as the type `hint` declares; a mismatch raises ValueError naming `where`."""
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected an object of {hint.__name__} fields, got {_show(value)}")
        return from_dict(hint, value, where)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {_show(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))) if args \
            else tuple(value)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is not type(None):
                try:
                    return _convert(arg, value, where)
                except ValueError as e:
                    errors.append(str(e))
        raise ValueError("; ".join(errors) or f"{where}: {_show(value)} does not match {hint}")
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{where}: expected true or false, got {_show(value)}")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where}: expected an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {_show(value)}")
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ValueError(f"{where}: expected a string, got {_show(value)}")
    return value


def _dtype(value: Any, where: str) -> Any:
    """A dtype field stored by name ("bfloat16") -> the jnp dtype."""
    found = getattr(jnp, value, None) if isinstance(value, str) else None
    if not _is_dtype(found):
        raise ValueError(f"{where}: expected a dtype name such as 'float32' or 'bfloat16', got {_show(value)}")
    return found


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Builds `cls` from `data`. Unknown keys, values of the wrong type and the config's own
    checks (`__post_init__`) raise ValueError naming the field and `where`."""
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
        if _is_dtype(defaults.get(k)):
            values[k] = _dtype(v, f"{where}.{k}")
        else:
            values[k] = _convert(hints[k], v, f"{where}.{k}")
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: {e}") from None
