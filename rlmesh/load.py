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
        self._runnable_now = 0.0

    def oversubscribed(self, spare: int = 0) -> bool:
        """More runnable threads than cores plus ``spare``, as of the last reading.

        ``spare`` tolerates a peer's helper threads: a client whose JAX policy runs on XLA's
        compute threads while its same-host server spins for the next request makes three or
        four runnable threads on two cores, and backing off then makes both sides sleep and
        pay a wake-up on every step.
        """
        now = time.monotonic()
        if now - self._checked >= self._INTERVAL_S:
            self._checked = now
            self._runnable_now = self._runnable()
        return self._runnable_now > self._cores + spare

    @property
    def cores(self) -> int:
        """The cores this process may use."""
        return self._cores

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
