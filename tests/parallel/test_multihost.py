"""Two processes on 127.0.0.1 form one JAX cluster (gloo CPU collectives)."""

import json
import os
import pathlib
import subprocess
import sys

import portpicker

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_two_process_cluster_reduces_across_hosts():
    port = portpicker.pick_unused_port()
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(port), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
        lines = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert len(lines) == 1, out[-3000:]
        results.append(json.loads(lines[0][len("RESULT "):]))
    assert sorted(r["process"] for r in results) == [0, 1]
    for r in results:
        assert r["devices"] == 8
        assert r["total"] == sum(range(8))
        # The DCN axis ("data") separates hosts: each mesh row lives on one process.
        assert r["row_processes"] == [r["process"]]
