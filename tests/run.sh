#!/usr/bin/env bash
# Installs everything the test suite needs and runs it. Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check -e ".[test]"
# Meta's sam2 is a parity reference only; its torchvision pin is not needed for the model code.
python -m pip install -q --disable-pip-version-check --no-deps "sam2==1.1.0"
# The TPU compiler for the ahead-of-time compile tests, kept out of the environment (where it
# would make every JAX start-up probe for a TPU): the libtpu that this jax names, in .cache/libtpu.
python - <<'EOF'
import importlib.metadata as md, os, subprocess, sys
spec = next((r.split(";")[0].strip() for r in md.requires("jax") or [] if r.startswith("libtpu")), None)
target = os.path.join(".cache", "libtpu")
have = [d for d in (os.listdir(target) if os.path.isdir(target) else []) if d.endswith(".dist-info")]
wanted = spec and spec.split("==")[-1].rstrip(".*")
if spec and not any(d.startswith(f"libtpu-{wanted}") for d in have):
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           "--no-deps", "--upgrade", "--target", target, spec])
    if done.returncode:
        print(f"tests/run.sh: could not install {spec} into {target}; the TPU compile tests will say so")
EOF
workers=$(python -c "import os; print(min(4, os.cpu_count() or 1))")
python -m pytest -q -n "$workers" --dist loadfile tests "$@"
