"""Runs an `experiments.*` entry point in a fresh CPU process, as a user would, for the tests."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_module(module: str, *flags: str, devices: int = 1, pythonpath: str = "",
               timeout: int = 600) -> subprocess.CompletedProcess:
    """`python -m module flags...` from the repository root on `devices` CPU devices."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}" if devices > 1 else "")
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", module, *flags], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_json(module: str, *flags: str, **kw) -> tuple[dict, str]:
    """Runs the module, asserts it succeeded and returns (its last JSON line, its stdout)."""
    proc = run_module(module, *flags, **kw)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1]), proc.stdout
