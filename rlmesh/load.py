"""Whether this machine is oversubscribed: the test every busy-wait makes before it spins on."""

from __future__ import annotations

import os
import time


class LoadMonitor:
    """Whether the machine has more runnable threads than this process may use cores.

    Re-read from ``/proc/loadavg`` at most every 100 ms (a read costs tens of microseconds).
    """

    _INTERVAL_S = 0.1

    def __init__(self) -> None:
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._checked = -1.0
        self._busy = False

    def oversubscribed(self) -> bool:
        """More runnable threads than cores, as of the last reading."""
        now = time.monotonic()
        if now - self._checked >= self._INTERVAL_S:
            self._checked = now
            self._busy = self._runnable() > self._cores
        return self._busy

    @staticmethod
    def _runnable() -> float:
        try:  # the fourth field of /proc/loadavg is "runnable/total" right now
            with open("/proc/loadavg") as handle:
                return float(handle.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


# One reading of the machine, shared by this process's connections and spinners.
MACHINE_LOAD = LoadMonitor()

__all__ = ["MACHINE_LOAD", "LoadMonitor"]
