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
    points_ok: jax.Array       # bool: both values index [0], [1] into finite numbers


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


def _points_field(p: js.ParsedAnswer, has1, s1, has2, s2) -> tuple[jax.Array, jax.Array]:
    v1, ok1 = _numbers(p, s1, 2)
    v2, ok2 = _numbers(p, s2, 2)
    pts = jnp.stack([v1, v2])
    ok = (has1 & has2 & ok1 & ok2 & (p.count[s1] >= 2) & (p.count[s2] >= 2)
          & jnp.all(jnp.isfinite(pts)))
    return jnp.trunc(pts), ok


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
