"""Audits a JSONL file of model outputs with Seg-Zero's rewards, on the host and on device.

  python -m experiments.score_rewards --input=IN.jsonl --output=OUT.jsonl [--tokenizer=PATH]

Input lines: {"id": ..., "response": "<think>...</think><answer>{...}</answer>",
"solution": "<box>(x1,y1),(x2,y2)</box><points>(x,y),(x,y)</points>"}.
Output lines: {"id", "line", "host": {...}, "device": {...}} with the components
thinking_format, segmentation_format, bbox_iou, bbox_l1, points_l1 and total; a line that
cannot be read gets zeros and an "error" naming the problem (and the line number).
Both paths start from the token ids of the response (Qwen2.5 vocabulary unless --tokenizer
is given): the host scores `decode(ids, skip_special_tokens=True)` with the Python reference
(as Seg-Zero's reward manager does), the device runs `device_rewards` on the ids.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

import numpy as np
from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "JSONL with id, response, solution per line.")
flags.DEFINE_string("output", None, "JSONL to write the per-line host/device components to.")
flags.DEFINE_string("tokenizer", None, "tokenizer.json or a model directory; default Qwen2.5.")
flags.DEFINE_string("reward", "seg_strict", "Reward scheme (seg_strict, seg, *_soft_acc).")
flags.DEFINE_integer("batch_size", 64, "Responses per device call.")
flags.DEFINE_integer("json_window", 256, "Static byte budget of the answer object on device.")
flags.DEFINE_integer("max_keys", 8, "Static number of answer keys tracked on device.")
flags.DEFINE_integer("show", 50, "Print a table of the first N scored lines (0: summary only).")


def read_records(path: str) -> list[dict[str, Any]]:
    """One record per non-empty line: {line, id, response, solution, error}."""
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            rec: dict[str, Any] = {"line": lineno, "id": None, "response": "", "solution": None,
                                   "error": None}
            try:
                obj = json.loads(raw)
                if not isinstance(obj, dict):
                    raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
                rec["id"] = obj.get("id")
                if not isinstance(obj.get("response"), str):
                    raise ValueError("field 'response' missing or not a string")
                rec["response"] = obj["response"]
                rec["solution"] = obj.get("solution")
                if rec["solution"] is None:
                    raise ValueError("field 'solution' missing")
            except Exception as err:  # noqa: BLE001 - any unreadable line scores 0
                rec["error"] = f"line {lineno}: {err}"
                rec["response"] = ""
            records.append(rec)
    return records


def host_scores(records, tokenizer, scheme: str) -> list[dict[str, float]]:
    """The reference pipeline: decode(encode(response), skip_special_tokens=True), then the
    Python reward (so a literal "<|im_end|>" in the text is dropped, as in training)."""
    from segzero_jax.rl.reward_host import host_reward
    texts = [tokenizer.decode(tokenizer.encode(r["response"]), skip_special_tokens=True)
             for r in records]
    return [host_reward(t, r["solution"], scheme) for t, r in zip(texts, records)]


@functools.lru_cache(maxsize=8)
def _device_scorer(tokenizer, scheme: str, max_bytes: int, json_window: int, max_keys: int):
    """A jitted scorer per (tokenizer, settings), so repeated calls compile once."""
    import jax

    from segzero_jax.rl.byte_table import byte_table_for_tokenizer
    from segzero_jax.rl.reward_device import device_rewards

    table = byte_table_for_tokenizer(tokenizer)
    return jax.jit(lambda ids, n, gb, gp, gv: device_rewards(
        ids, n, gb, gp, table, scheme, gt_valid=gv, max_bytes=max_bytes,
        json_window=json_window, max_keys=max_keys))


def device_scores(records, tokenizer, scheme: str, batch_size: int, json_window: int,
                  max_keys: int) -> list[dict[str, float]]:
    """Tokenizes the responses and scores them with `device_rewards` in fixed-shape batches."""
    import jax

    from segzero_jax.rl.reward_host import COMPONENTS, parse_ground_truth

    encoded = [tokenizer.encode(r["response"]) for r in records]
    longest = max([len(e) for e in encoded] + [1])
    t = -(-longest // 128) * 128
    longest_bytes = max([len(r["response"].encode("utf-8")) for r in records] + [1])
    max_bytes = max(8 * t, -(-longest_bytes // 1024) * 1024)
    fn = _device_scorer(tokenizer, scheme, max_bytes, json_window, max_keys)
    out: list[dict[str, float]] = []
    for lo in range(0, len(records), batch_size):
        chunk = range(lo, min(lo + batch_size, len(records)))
        ids = np.full((batch_size, t), tokenizer.pad_id, np.int32)
        lens = np.zeros((batch_size,), np.int32)
        gb = np.zeros((batch_size, 4), np.float32)
        gp = np.zeros((batch_size, 2, 2), np.float32)
        gv = np.zeros((batch_size, 2), bool)
        for row, i in enumerate(chunk):
            ids[row, :len(encoded[i])] = encoded[i]
            lens[row] = len(encoded[i])
            box, points = parse_ground_truth(records[i]["solution"])
            if box is not None:
                gb[row], gv[row, 0] = box, True
            if points is not None:
                gp[row], gv[row, 1] = points, True
        res = jax.device_get(fn(ids, lens, gb, gp, gv))
        for row, _ in enumerate(chunk):
            out.append({k: float(res[k][row]) for k in COMPONENTS + ("total",)})
    return out


def format_table(rows: list[dict[str, Any]], limit: int) -> str:
    """A fixed-width table: id, the host components, host and device totals."""
    short = {"thinking_format": "think", "segmentation_format": "format", "bbox_iou": "iou",
             "bbox_l1": "box_l1", "points_l1": "pts_l1"}
    head = f"{'line':>4}  {'id':<28}" + "".join(f"{v:>7}" for v in short.values())
    lines = [head + f"{'host':>7}{'device':>7}", "-" * (len(head) + 14)]
    for row in rows[:limit]:
        h, d = row["host"], row["device"]
        ident = str(row["id"])[:28]
        lines.append(f"{row['line']:>4}  {ident:<28}" + "".join(f"{h[k]:>7.2f}" for k in short)
                     + f"{h['total']:>7.2f}{d['total']:>7.2f}" + ("  (unreadable)" if "error" in row else ""))
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in the output file")
    return "\n".join(lines)


def score_file(input_path: str, output_path: str, tokenizer_path: Optional[str] = None,
               scheme: str = "seg_strict", batch_size: int = 64, json_window: int = 256,
               max_keys: int = 8) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores every line of `input_path` into `output_path`; returns (summary, rows)."""
    from segzero_jax.models.qwen2_5_vl.tokenizer import QwenTokenizer

    tokenizer = (QwenTokenizer.from_file(tokenizer_path) if tokenizer_path
                 else QwenTokenizer.default())
    records = read_records(input_path)
    host = host_scores(records, tokenizer, scheme)
    device = device_scores(records, tokenizer, scheme, batch_size, json_window, max_keys)
    errors = disagree = 0
    rows = []
    with open(output_path, "w", encoding="utf-8") as f:
        for rec, h, d in zip(records, host, device):
            row = {"id": rec["id"], "line": rec["line"], "host": h, "device": d}
            if rec["error"]:
                row["error"] = rec["error"]
                errors += 1
                logging.warning("%s", rec["error"])
            if any(abs(h[k] - d[k]) > 1e-4 for k in h):
                disagree += 1
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            rows.append(row)
    n = max(len(records), 1)
    summary = {"lines": len(records), "malformed": errors, "host_device_disagree": disagree,
               "mean_total_host": sum(h["total"] for h in host) / n,
               "mean_total_device": sum(d["total"] for d in device) / n}
    return summary, rows


def main(argv):
    del argv
    if not FLAGS.input or not FLAGS.output:
        raise app.UsageError("--input and --output are required")
    if not os.path.isfile(FLAGS.input):
        raise app.UsageError(f"--input={FLAGS.input}: no such file")
    out_dir = os.path.dirname(os.path.abspath(FLAGS.output))
    if not os.path.isdir(out_dir):
        raise app.UsageError(f"--output={FLAGS.output}: directory {out_dir} does not exist")
    if FLAGS.tokenizer and not os.path.exists(FLAGS.tokenizer):
        raise app.UsageError(f"--tokenizer={FLAGS.tokenizer}: no such file or directory")
    summary, rows = score_file(FLAGS.input, FLAGS.output, FLAGS.tokenizer, FLAGS.reward,
                               FLAGS.batch_size, FLAGS.json_window, FLAGS.max_keys)
    if FLAGS.show > 0:
        print(format_table(rows, FLAGS.show))
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
