"""Doorbells: a FIFO per direction, so that a waiting process sleeps instead of spinning.

A FIFO is a file both sides open by path, which works across a container boundary where an
eventfd (which needs fd passing) would not. Each side opens it read-write and non-blocking,
which never blocks on open and never sees end-of-file; peer death is the ZeroMQ liveness
channel's job, not the doorbell's.

A message rings (one ``write`` of a byte; a full pipe means a wake-up is already pending)
only when the receiving side said it sleeps: each side keeps an "awake" word in the region.
A side about to sleep clears its word, passes a :func:`fence`, drains the FIFO and re-checks
the sequence number before it polls; a sender publishes the sequence number, passes a fence
and then reads the receiver's word. With the fences one of the two always sees the other's
write, so no wake-up is lost; sleepers still re-check once after a short timeout, in case a
platform's fence is weaker than x86's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from rlmesh.load import MACHINE_LOAD

_DRAIN_BYTES = 4096


_FENCE = threading.Lock()
# How long a side that just went to sleep waits before it re-checks anyway (see module doc).
RECHECK_SECONDS = 0.01


def fence() -> None:
    """A full memory barrier between this thread's earlier stores and later loads.

    Taking and releasing a lock runs atomic read-modify-write instructions, which order all
    memory accesses around them on x86.
    """
    with _FENCE:
        pass


class Doorbell:
    """One direction's FIFO, opened read-write and non-blocking.

    Args:
        path: The FIFO's path.
        create: Make the FIFO (mode 0600) first; the path must not exist.

    Raises:
        OSError: when the FIFO cannot be made or opened (the caller falls back to ZeroMQ).
    """

    def __init__(self, path: str, *, create: bool = False) -> None:
        self.path = path
        if create:
            os.mkfifo(path, 0o600)
        flags = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | (0 if create else os.O_NOFOLLOW)
        try:
            self.fd: int = os.open(path, flags)
        except BaseException:
            if create:
                _unlink(path)
            raise
        self.closed = False

    def ring(self) -> None:
        """Wake the other side if it sleeps on this doorbell."""
        try:
            os.write(self.fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending already

    def drain(self) -> None:
        """Discard pending rings (before re-checking the condition and sleeping)."""
        try:
            while len(os.read(self.fd, _DRAIN_BYTES)) == _DRAIN_BYTES:
                pass
        except BlockingIOError:
            pass

    def unlink(self) -> None:
        """Remove the FIFO's path (open ends keep working). Idempotent."""
        _unlink(self.path)

    def close(self) -> None:
        """Close the fd. Idempotent."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)


# Runnable threads beyond the cores that same-host spinning tolerates: one per core, for a
# peer's helpers (XLA's compute threads under a JAX policy, ZeroMQ's I/O thread). Backing
# off at the first extra thread made a PPO client and its server both sleep and pay two
# wake-ups per step: the collect step was 10% slower than with this slack (same run).
SPARE_THREADS = MACHINE_LOAD.cores


class Spinner:
    """Adaptive busy-wait: spin about as long as the awaited event usually takes, when it pays.

    The budget follows the waits seen: an event that arrives, during a spin or after the spin
    gave up and the caller slept, within ``max_seconds`` of the spin's start sets the budget
    to twice that wait (up to ``max_seconds``); one that takes longer halves it, so a peer
    that stays quiet costs ever less CPU and one that comes back is spun for again at once.
    The loop yields the CPU between checks. When a yield hands the core to another task for
    long and the machine has more than twice as many runnable threads as cores, spinning only
    delays everyone (the peer included, and a spinner loses the core for a whole time slice
    at a time), so spinning pauses for a number of waits that doubles while it keeps
    happening. Fewer than that is the peer's own helpers (see :data:`SPARE_THREADS`).

    Args:
        max_seconds: Longest spin; 0 never spins.
    """

    __slots__ = ("backoff", "budget", "gave_up_at", "max_seconds", "skip")

    machine = MACHINE_LOAD

    # A yield that returns later than this ran another task: the cores are oversubscribed.
    STOLEN_SECONDS = 50e-6
    BACKOFF_MIN = 8
    BACKOFF_MAX = 1024

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max(0.0, max_seconds)
        self.budget = self.max_seconds
        self.skip = 0
        self.backoff = 0
        self.gave_up_at: float | None = None  # the start of a spin that ended without the event

    def spin(self, ready: object, index: int, target: int) -> bool:
        """Spin until ``ready[index] >= target`` or the budget runs out; whether it got there."""
        if ready[index] >= target:  # type: ignore[index]
            self.arrived()
            return True
        return self.spin_until(lambda: ready[index] >= target)  # type: ignore[index]

    def spin_until(self, ready: Callable[[], bool]) -> bool:
        """Spin until ``ready()`` or the budget runs out; whether it got there."""
        if self.gave_up_at is not None:  # the event of the last spin came too late to learn from
            self._learn(self.max_seconds * 2)
        budget = self.budget
        if budget <= 0:
            return False
        if self.skip:
            self.skip -= 1
            return False
        clock = time.perf_counter
        start = before = clock()
        end = start + budget
        yield_cpu = os.sched_yield
        stolen = self.STOLEN_SECONDS
        while True:
            if ready():
                self._learn(clock() - start)
                self.backoff = 0
                return True
            yield_cpu()
            now = clock()
            # Another task ran on this core. On an oversubscribed machine spinning only delays
            # everyone; otherwise it is likely the peer, which the scheduler placed beside this
            # spinner after a wake-up: both staying runnable lets it move one to an idle core.
            if now - before > stolen and self.machine.oversubscribed(SPARE_THREADS):
                self.backoff = min(max(2 * self.backoff, self.BACKOFF_MIN), self.BACKOFF_MAX)
                self.skip = self.backoff
                return False
            if now >= end:
                break
            before = now
        self.gave_up_at = start
        return False

    def arrived(self) -> None:
        """Tell the spinner the event it last gave up on has just been seen (after a sleep)."""
        if self.gave_up_at is not None:
            self._learn(time.perf_counter() - self.gave_up_at)

    def _learn(self, waited: float) -> None:
        """Fit the budget to one observed wait."""
        self.gave_up_at = None
        if waited <= self.max_seconds:
            self.budget = min(self.max_seconds, max(self.budget, 2 * waited))
        else:
            self.budget = max(self.budget / 2, self.max_seconds / 64)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# How long a session worker spins for its client's next request after a reply (adaptive,
# see Spinner): an agent stepping back to back sends it within tens of microseconds, and a
# core that sleeps between steps comes back with cold caches.
WORKER_SPIN_SECONDS = 0.0005


def worker_spinner(client_pid: object) -> Spinner:
    """A session worker's spinner for the client whose handshake gave ``client_pid``.

    A client in this very process competes for the GIL and the cores: no spinning for it.
    """
    return Spinner(0.0 if client_pid == os.getpid() else WORKER_SPIN_SECONDS)
