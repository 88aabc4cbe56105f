"""The auditing command on the example file and on malformed input."""

import json
import os

import pytest

from experiments.score_rewards import format_table, score_file

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "examples",
                       "model_outputs.jsonl")
EXPECTED_TOTALS = {"perfect": 5.0, "close-box-far-points": 4.0, "wrong-object": 2.0,
                   "keys-reordered-floats": 5.0, "single-quotes-not-json": 1.0,
                   "brace-in-thinking": 1.0, "no-think-tags": 4.0, "truncated": 0.0,
                   "text-after-answer": 4.0, "missing-points-key": 3.0,
                   "point-outside-box": 4.0, "special-token-at-end": 5.0, "no-solution": 0.0}


@pytest.mark.slow
def test_example_file(tmp_path):
    out = tmp_path / "out.jsonl"
    summary, returned = score_file(EXAMPLE, str(out), batch_size=8)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert returned == rows
    table = format_table(rows, 5).splitlines()
    assert len(table) == 2 + 5 + 1 and "perfect" in table[2] and table[2].rstrip().endswith("5.00")
    assert table[-1] == "... 9 more in the output file"
    assert summary["lines"] == len(rows) == 14
    assert summary["malformed"] == 2 and summary["host_device_disagree"] == 0
    by_id = {r["id"]: r for r in rows if r["id"] is not None}
    for key, total in EXPECTED_TOTALS.items():
        assert by_id[key]["host"]["total"] == total, key
        assert by_id[key]["device"] == by_id[key]["host"], key
    bad = [r for r in rows if "error" in r]
    assert [r["line"] for r in bad] == [13, 14]
    assert all("line" in r["error"] and r["host"]["total"] == 0.0 for r in bad)
    assert set(rows[0]["host"]) == {"thinking_format", "segmentation_format", "bbox_iou",
                                    "bbox_l1", "points_l1", "total"}


def test_garbage_lines_never_crash(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'[1, 2]\n{"id": 1, "response": 5, "solution": "x"}\n\xff\xfe{\n'
                    + b"[" * 5000 + b"\n")
    out = tmp_path / "out.jsonl"
    summary, _ = score_file(str(src), str(out), batch_size=8)
    assert summary["lines"] == 4 and summary["malformed"] == 4
    assert all(json.loads(line)["device"]["total"] == 0.0 for line in out.read_text().splitlines())


def test_missing_paths_are_usage_errors(tmp_path):
    from tests.experiments.scripts import run_module

    for flags, words in (([f"--input={tmp_path}/none.jsonl", f"--output={tmp_path}/o.jsonl"], "none.jsonl: no such file"),
                         (["--input=experiments/examples/model_outputs.jsonl", f"--output={tmp_path}/no/o.jsonl"],
                          "does not exist")):
        proc = run_module("experiments.score_rewards", *flags, timeout=120)
        assert proc.returncode != 0 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
