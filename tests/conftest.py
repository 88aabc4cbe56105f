"""Test set-up: every test process sees 8 fake CPU devices, so sharding code runs as on a pod."""

import os
import pathlib
import sys

# Tests import shared reference builders as `tests.…`; make the repository root importable
# however pytest is launched.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
