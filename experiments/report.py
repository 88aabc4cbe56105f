"""The result line every benchmark / compile script ends with: one JSON line on stdout, and the
same record written to `--out` when given (a device run collects those files)."""

from __future__ import annotations

import json

from absl import flags

_OUT = flags.DEFINE_string("out", "", "also write the JSON result to this file")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(record, f, indent=1)
