"""Every library module imports on a bare accelerator image: no torch, transformers, grain,
TensorFlow, TFDS, Meta's sam2 or ml_collections."""

import os
import subprocess
import sys

BLOCKED = ("torch", "transformers", "grain", "tensorflow", "tensorflow_datasets", "sam2",
           "ml_collections", "hydra")

CODE = f"""
import importlib, pkgutil, sys
for name in {BLOCKED!r}:
    sys.modules[name] = None
import segzero_jax
names = [m.name for m in pkgutil.walk_packages(segzero_jax.__path__, "segzero_jax.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_library_imports_without_heavy_stacks():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip().splitlines()[-1]) >= 30
