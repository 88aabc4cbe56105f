"""Seg-Zero rewards inside `jax.jit`, from response token ids (no host round-trip).

  device_rewards(token_ids int32[B, T], lengths int32[B], gt_bbox float32[B, 4],
                 gt_points float32[B, 2, 2], byte_table, name="seg_strict")
    -> {"thinking_format", "segmentation_format", "bbox_iou", "bbox_l1", "points_l1",
        "total"}: float32[B] each

Per response: ids -> bytes (`byte_table.response_bytes`), the think/answer template and
the `{[^}]+}` span on the bytes (`text_checks`), a JSON automaton over that span
(`json_scan`), then the answer fields are resolved the way the named scheme reads them
(`FIELD_RESOLVERS`: strict key names or the soft "contains" rules with Python-dict
duplicate-key semantics) and the accuracy terms are computed in float32 as in
`reward_host`. The scheme names are those of `reward_host.HOST_REWARDS`.

Point coordinates given as strings go through Python's `int()` on the host, and the device
reads them the same way (`json_scan`): `["433", " +0_181\\u3000"]` is the point (433, 181)
(surrounding ASCII or Unicode whitespace, a sign, single underscores between digits, leading
zeros, JSON escapes), `["4.5", "1e3"]` is no point; a string value is indexed by character
as the host does (`"57"` is (5, 7)). Where the device cannot follow Python exactly it scores
the affected components 0 (never above the reference): byte stream longer than `max_bytes`
(all components); a response whose only `</think>` followed by `<answer>` is its third or
later `</think>` (thinking); `{...}` span longer than `json_window` bytes, a key with a
surrogate `\\uD800`-`\\uDFFF` escape or invalid UTF-8, or more than `max_keys` keys (answer
components); a string coordinate with digits of another script (`"\\uff13"`, which `int()`
reads as 3) or more than 7 significant digits, numbers with more than 7 significant digits
or a decimal exponent beyond +-10 (the accuracy components that read them); for the soft
format, string values with escapes or non-ASCII characters. Arithmetic
is float32, except that the IoU test (integer coordinates below 8192) and the points
distance test (integer coordinates) are decided in integer arithmetic exactly as Python
decides them (`bbox_iou_above_half`, `points_distance_below_100`); the L1 test is exact for
integer coordinates below 4096; a non-integer IoU, L1 or distance within about 1e-6
(relative) of its threshold may fall on the other side.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from segzero_jax.rl import json_scan as js
from segzero_jax.rl.answer_fields import FIELD_RESOLVERS, AnswerFields
from segzero_jax.rl.byte_table import ByteTable, response_bytes
from segzero_jax.rl.reward_host import COMPONENTS, DEFAULT_IMAGE_SIZE, HOST_REWARDS
from segzero_jax.rl.text_checks import first_brace_object, thinking_format_bytes


def box_iou(pred: jax.Array, gt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(inter, union) with the +1-pixel convention of `seg_iou_reward.iou`."""
    ix1, iy1 = jnp.maximum(pred[0], gt[0]), jnp.maximum(pred[1], gt[1])
    ix2, iy2 = jnp.minimum(pred[2], gt[2]), jnp.minimum(pred[3], gt[3])
    inter = jnp.where((ix1 < ix2) & (iy1 < iy2), (ix2 - ix1 + 1) * (iy2 - iy1 + 1), 0)
    area1 = (pred[2] - pred[0] + 1) * (pred[3] - pred[1] + 1)
    area2 = (gt[2] - gt[0] + 1) * (gt[3] - gt[1] + 1)
    return inter, area1 + area2 - inter


def points_distance(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """Mean distance of the better pairing, `seg_point_l1_reward.points_distance`."""
    d = lambda a, b: jnp.sqrt((a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2)  # noqa: E731
    return jnp.minimum(d(pred[0], gt[0]) + d(pred[1], gt[1]),
                       d(pred[0], gt[1]) + d(pred[1], gt[0])) / 2


def _integer_valued(*arrays: jax.Array, bound: float) -> jax.Array:
    """True when every value is an integer of magnitude below `bound` (scalar bool)."""
    x = jnp.concatenate([a.reshape(-1) for a in arrays])
    return jnp.all((x == jnp.round(x)) & (jnp.abs(x) < bound))


def bbox_iou_above_half(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """`iou(pred, gt) > 0.5` as Python decides it, i.e. union > 0 and 2 inter > union. With
    integer coordinates below 8192 (areas below 2^28) it is computed in int32, since float32
    sums of areas above 2^24 round; otherwise in float32."""
    inter, union = box_iou(pred, gt)
    approx = (union > 0) & (2 * inter > union)
    integral = _integer_valued(pred, gt, bound=2 ** 13)
    inter_i, union_i = box_iou(jnp.where(integral, pred, 0).astype(jnp.int32),
                               jnp.where(integral, gt, 0).astype(jnp.int32))
    return jnp.where(integral, (union_i > 0) & (2 * inter_i > union_i), approx)


def _pair_sum_below_200(q1: jax.Array, q2: jax.Array) -> jax.Array:
    """sqrt(q1) + sqrt(q2) < 200, exactly, for integer-valued float32 q1, q2 >= 0.

    Squaring twice: both q < 40000, K = 40000 + q2 - q1 > 0 and 160000 q2 < K^2; with
    K = 400 a + b (0 <= b < 400) the last is 160000 (q2 - a^2) < 800 a b + b^2, whose right side
    stays below 6.5e7, so clipping q2 - a^2 to +-1000 keeps every term inside int32.
    """
    small = (q1 < 40000) & (q2 < 40000)
    i1 = jnp.clip(q1, 0, 40000).astype(jnp.int32)
    i2 = jnp.clip(q2, 0, 40000).astype(jnp.int32)
    k = 40000 + i2 - i1
    a, b = k // 400, k % 400
    d = jnp.clip(i2 - a * a, -1000, 1000)
    return small & (k > 0) & (160000 * d < 800 * a * b + b * b)


def points_distance_below_100(pred: jax.Array, gt: jax.Array) -> jax.Array:
    """`points_distance(pred, gt) < 100` as Python decides it in float64. With integer
    coordinates (the reference truncates predicted points with int(); ground truth is
    integral) this is exact integer arithmetic: a mean distance can lie within 4e-8 of 100
    without equalling it, where float32 square roots (error ~3e-5) take the wrong side."""
    def sq(a, b):
        return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2

    exact = (_pair_sum_below_200(sq(pred[0], gt[0]), sq(pred[1], gt[1]))
             | _pair_sum_below_200(sq(pred[0], gt[1]), sq(pred[1], gt[0])))
    return jnp.where(_integer_valued(pred, gt, bound=2 ** 22), exact, points_distance(pred, gt) < 100)


def _positive(x: jax.Array) -> jax.Array:
    return jnp.where(x > 0, x, 0.0)


def accuracy_terms(a: AnswerFields, gt_bbox: jax.Array, gt_points: jax.Array,
                   soft_accuracy: bool, image_size: float) -> dict[str, jax.Array]:
    """bbox_iou, bbox_l1, points_l1 for one response (see `reward_host.score_components`)."""
    l1 = jnp.sum(jnp.abs(a.bbox - gt_bbox)) / 4
    b, p = a.bbox, a.points
    inside = jnp.all((b[0] <= p[:, 0]) & (p[:, 0] <= b[2]) & (b[1] <= p[:, 1]) & (p[:, 1] <= b[3]))
    if soft_accuracy:
        inter, union = box_iou(a.bbox, gt_bbox)
        iou = _positive(jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0))
        l1_r = _positive(1 - l1 / image_size)
        pt_r = _positive(1 - points_distance(p, gt_points) / image_size)
    else:
        iou = bbox_iou_above_half(a.bbox, gt_bbox).astype(jnp.float32)
        l1_r = (l1 < 10).astype(jnp.float32)
        pt_r = points_distance_below_100(p, gt_points).astype(jnp.float32)
    pts_ok = a.points_ok & a.bbox_ok & inside
    return {"bbox_iou": jnp.where(a.bbox_ok, iou, 0.0), "bbox_l1": jnp.where(a.bbox_ok, l1_r, 0.0),
            "points_l1": jnp.where(pts_ok, pt_r, 0.0)}


def _single(ids, length, gt_bbox, gt_points, gt_valid, table: ByteTable, *, soft_format: bool,
            soft_accuracy: bool, max_bytes: int, json_window: int, max_keys: int,
            image_size: float) -> dict[str, jax.Array]:
    stream, n, overflow = response_bytes(ids, length, table, max_bytes)
    thinking = thinking_format_bytes(stream, n) & ~overflow
    found, start, end = first_brace_object(stream, n)
    span = end - start + 1
    fits = found & (span <= json_window) & ~overflow
    padded = jnp.concatenate([stream, jnp.zeros((json_window,), stream.dtype)])
    window = jax.lax.dynamic_slice(padded, (start,), (json_window,))
    parsed = js.scan_answer_json(window, jnp.where(fits, span, 0), max_keys)
    usable = fits & parsed.ok & ~parsed.exotic
    fields = FIELD_RESOLVERS["soft" if soft_format else "strict"](parsed)
    acc = accuracy_terms(fields, gt_bbox.astype(jnp.float32), gt_points.astype(jnp.float32),
                         soft_accuracy, image_size)
    out = {"thinking_format": thinking.astype(jnp.float32),
           "segmentation_format": (usable & fields.format_ok).astype(jnp.float32)}
    gt_ok = {"bbox_iou": gt_valid[0], "bbox_l1": gt_valid[0], "points_l1": gt_valid[1]}
    for name, value in acc.items():
        out[name] = jnp.where(usable & gt_ok[name], value, 0.0).astype(jnp.float32)
    out["total"] = sum(out[c] for c in COMPONENTS)
    return out


def device_rewards(token_ids: jax.Array, lengths: jax.Array, gt_bbox: jax.Array,
                   gt_points: jax.Array, byte_table: ByteTable, name: str = "seg_strict", *,
                   gt_valid: Optional[jax.Array] = None, max_bytes: Optional[int] = None,
                   json_window: int = 256, max_keys: int = 8,
                   image_size: float = DEFAULT_IMAGE_SIZE) -> dict[str, jax.Array]:
    """Reward components float32[B] for a batch of responses (pure; jit/vmap/shard safe).

    token_ids int32[B, T] (positions >= lengths ignored; give `response_lengths` for EOS),
    gt_bbox float32[B, 4], gt_points float32[B, 2, 2], gt_valid bool[B] or bool[B, 2] (bbox,
    points readable; default all true),
    `max_bytes` the static byte budget per response (default 8 * T).
    """
    if name not in HOST_REWARDS:
        raise KeyError(f"unknown reward {name!r}; known: {sorted(HOST_REWARDS)}")
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids must be [B, T], got shape {token_ids.shape}")
    b, t = token_ids.shape
    if gt_bbox.shape != (b, 4) or gt_points.shape != (b, 2, 2) or lengths.shape != (b,):
        raise ValueError(f"shapes: token_ids {token_ids.shape}, lengths {lengths.shape}, "
                         f"gt_bbox {gt_bbox.shape} (want [B, 4]), gt_points "
                         f"{gt_points.shape} (want [B, 2, 2])")
    gt_valid = jnp.ones((b, 2), bool) if gt_valid is None else jnp.asarray(gt_valid, bool)
    if gt_valid.shape == (b,):
        gt_valid = jnp.stack([gt_valid, gt_valid], axis=-1)
    if gt_valid.shape != (b, 2):
        raise ValueError(f"gt_valid must be [B] or [B, 2], got {gt_valid.shape}")
    scheme = HOST_REWARDS[name]
    fn = lambda i, n, gb, gp, gv: _single(  # noqa: E731
        i, n, gb, gp, gv, byte_table, max_bytes=max_bytes or 8 * max(t, 1),
        json_window=json_window, max_keys=max_keys, image_size=image_size, **scheme)
    return jax.vmap(fn)(token_ids, lengths, gt_bbox, gt_points, gt_valid)
