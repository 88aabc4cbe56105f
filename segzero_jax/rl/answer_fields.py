"""Which answer values a reward scheme reads, resolved from the parsed JSON on device.

`FIELD_RESOLVERS["strict"]` mirrors `seg_restrict` (keys "bbox", "points_1", "points_2");
`FIELD_RESOLVERS["soft"]` mirrors `seg` (first key containing "bbox", keys containing
"point"/"points" in dict order). Both follow Python's dict semantics for repeated keys: a
key keeps its first position and its last value.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from segzero_jax.rl import json_scan as js


class AnswerFields(NamedTuple):
    """What the reward functions read from the parsed answer (one response)."""

    format_ok: jax.Array       # bool: the scheme's segmentation-format check passes
    bbox: jax.Array            # float32[4]
    bbox_ok: jax.Array         # bool: a list of 4 numbers (Python arithmetic would succeed)
    points: jax.Array          # float32[2, 2], already truncated like int()
    points_ok: jax.Array       # bool: int() of both values' [0] and [1] succeeds


def _first_index(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.any(mask), jnp.argmax(mask)


def _last_index(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    k = mask.shape[0]
    return jnp.any(mask), k - 1 - jnp.argmax(mask[::-1])


def _numbers(p: js.ParsedAnswer, slot, n: int) -> tuple[jax.Array, jax.Array]:
    """The first n elements of slot's array and whether they are all numbers."""
    ok = (p.kind[slot] == js.KIND_ARRAY) & jnp.all(p.elem_num[slot, :n])
    return p.elem[slot, :n], ok


def _bbox_field(p: js.ParsedAnswer, has, slot) -> tuple[jax.Array, jax.Array]:
    vals, num = _numbers(p, slot, 4)
    return vals, has & num & (p.count[slot] == 4)


def _point(p: js.ParsedAnswer, slot) -> tuple[jax.Array, jax.Array]:
    """`[int(v[0]), int(v[1])]` of slot's value v, and whether Python computes it: an array
    whose first two elements are finite numbers/bools or strings `int()` reads
    (["433", 181]), or a string whose first two characters are digits ("57" -> 5, 7)."""
    readable = p.elem_num[slot, :2] | p.elem_int_str[slot, :2]
    array = (p.kind[slot] == js.KIND_ARRAY) & (p.count[slot] >= 2) & jnp.all(readable)
    string = (p.kind[slot] == js.KIND_STRING) & jnp.all(p.elem_int_str[slot, :2])
    vals = p.elem[slot, :2]
    return jnp.trunc(vals), (array | string) & jnp.all(jnp.isfinite(vals))


def _points_field(p: js.ParsedAnswer, has1, s1, has2, s2) -> tuple[jax.Array, jax.Array]:
    v1, ok1 = _point(p, s1)
    v2, ok2 = _point(p, s2)
    return jnp.stack([v1, v2]), has1 & has2 & ok1 & ok2


def resolve_strict(p: js.ParsedAnswer) -> AnswerFields:
    """`seg_restrict`: keys "bbox", "points_1", "points_2"; a duplicate key's last value."""
    f = p.key_flags
    hb, sb = _last_index(f[:, js.KEY_EQ_BBOX])
    h1, s1 = _last_index(f[:, js.KEY_EQ_POINTS_1])
    h2, s2 = _last_index(f[:, js.KEY_EQ_POINTS_2])
    is_list = lambda h, s, n: h & (p.kind[s] == js.KIND_ARRAY) & (p.count[s] == n)  # noqa
    fmt = is_list(hb, sb, 4) & is_list(h1, s1, 2) & is_list(h2, s2, 2)
    bbox, bbox_ok = _bbox_field(p, hb, sb)
    points, points_ok = _points_field(p, h1, s1, h2, s2)
    return AnswerFields(fmt, bbox, bbox_ok, points, points_ok)


def _value_len(p: js.ParsedAnswer, slot) -> jax.Array:
    """len() of a value: array count, simple string length, else -1 (TypeError/unknown)."""
    return jnp.where(p.kind[slot] == js.KIND_ARRAY, p.count[slot],
                     jnp.where((p.kind[slot] == js.KIND_STRING) & p.str_simple[slot],
                               p.str_len[slot], -1))


def resolve_soft(p: js.ParsedAnswer) -> AnswerFields:
    """`seg`: first key containing "bbox"; keys containing "point"/"points" in dict order.

    Python dict semantics: a repeated key keeps its first position and its last value.
    """
    k = p.kind.shape[0]
    present = p.kind != js.KIND_NONE
    same = (jnp.all(p.key_hash[:, None, :] == p.key_hash[None, :, :], axis=-1)
            & present[:, None] & present[None, :])
    earlier = jnp.arange(k)[None, :] < jnp.arange(k)[:, None]
    first = present & ~jnp.any(same & earlier, axis=1)
    value_slot = k - 1 - jnp.argmax(same[:, ::-1], axis=1)
    f = p.key_flags
    hb, kb = _first_index(first & f[:, js.KEY_HAS_BBOX])
    sb = value_slot[kb]
    fmt_points = first & f[:, js.KEY_HAS_POINT] & (jnp.arange(k) != jnp.where(hb, kb, -1))
    n_fmt_points = jnp.sum(fmt_points)
    fp1 = jnp.argmax(fmt_points)
    fp2 = jnp.argmax(fmt_points & (jnp.arange(k) > fp1))
    fmt = (hb & (n_fmt_points >= 2) & (_value_len(p, sb) == 4)
           & (_value_len(p, value_slot[fp1]) == 2) & (_value_len(p, value_slot[fp2]) == 2))
    acc_points = first & f[:, js.KEY_HAS_POINTS]
    ap1 = jnp.argmax(acc_points)
    ap2 = jnp.argmax(acc_points & (jnp.arange(k) > ap1))
    has_two = jnp.sum(acc_points) >= 2
    bbox, bbox_ok = _bbox_field(p, hb, sb)
    points, points_ok = _points_field(p, has_two, value_slot[ap1], has_two, value_slot[ap2])
    return AnswerFields(fmt, bbox, bbox_ok, points, points_ok)


FIELD_RESOLVERS: dict[str, Callable[[js.ParsedAnswer], AnswerFields]] = {
    "strict": resolve_strict,
    "soft": resolve_soft,
}
