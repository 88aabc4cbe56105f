#!/usr/bin/env bash
# Installs everything the test suite needs and runs it. Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -e ".[test]"
# Meta's sam2 is a parity reference only; its torchvision pin is not needed for the model code.
python -m pip install -q --disable-pip-version-check --no-deps "sam2==1.1.0"
workers=$(python -c "import os; print(min(4, os.cpu_count() or 1))")
python -m pytest -q -n "$workers" --dist loadfile tests "$@"
