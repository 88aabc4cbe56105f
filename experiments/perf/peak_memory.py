"""Peak memory of a timed region, measured one way for JAX and torch: the accelerator
allocator's peak where the backend keeps one, else the growth of this process's resident set
sampled every millisecond (CPU hosts). No flags here, so any benchmark can import it."""

from __future__ import annotations

import os
import threading
import time
from typing import Optional


class RssPeak:
    """Peak resident-set growth (bytes) of this process while the context is open."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.001)

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def growth(self) -> int:
        return self.peak - self.base


def jax_device_peak() -> Optional[int]:
    """The first JAX device's allocator peak (`peak_bytes_in_use`, since the process started), or
    None where the backend reports no memory statistics (the CPU)."""
    import jax
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return int(peak) if peak else None
