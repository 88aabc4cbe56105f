"""The result line every benchmark / compile script ends with: one JSON line on stdout, and the
same record written to `--json_out` when given (a device run collects those files). The flag
is not called `--out`: `experiments.convert` has an `--out` directory, and absl flags are global."""

from __future__ import annotations

import json

from absl import flags

_OUT = flags.DEFINE_string("json_out", "", "also write the JSON result to this file")


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(record, f, indent=1)
