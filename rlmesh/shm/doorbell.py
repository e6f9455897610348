"""Doorbells: a FIFO per direction, so that a waiting process sleeps instead of spinning.

A FIFO is a file both sides open by path, which works across a container boundary where an
eventfd (which needs fd passing) would not. Each side opens it read-write and non-blocking,
which never blocks on open and never sees end-of-file; peer death is the ZeroMQ liveness
channel's job, not the doorbell's.

Every message rings (one ``write`` of a byte; a full pipe means a wake-up is already
pending). A waiter drains the FIFO, re-checks the sequence number, then polls the FIFO's fd.
Ringing after each publish, and draining before each re-check, means no wake-up is lost
without relying on cross-process memory fences in Python.
"""

from __future__ import annotations

import os
import time

_DRAIN_BYTES = 4096


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


class Spinner:
    """Adaptive busy-wait: spin about as long as the awaited event usually takes, when it pays.

    A spin that succeeds keeps the budget at twice the observed wait (up to ``max_seconds``);
    a spin that times out halves it, so a peer that stays quiet costs ever less CPU. The loop
    yields the CPU between checks; when a yield hands the core to another task for long, the
    machine has more busy tasks than cores, where spinning only delays everyone (the peer
    included, and a spinner loses the core for a whole time slice at a time). Spinning then
    pauses for a number of waits that doubles while it keeps happening.

    Args:
        max_seconds: Longest spin; 0 never spins.
    """

    __slots__ = ("backoff", "budget", "max_seconds", "skip")

    # A yield that returns later than this ran another task: the cores are oversubscribed.
    STOLEN_SECONDS = 50e-6
    BACKOFF_MIN = 8
    BACKOFF_MAX = 1024

    def __init__(self, max_seconds: float) -> None:
        self.max_seconds = max(0.0, max_seconds)
        self.budget = self.max_seconds
        self.skip = 0
        self.backoff = 0

    def spin(self, ready: object, index: int, target: int) -> bool:
        """Spin until ``ready[index] >= target`` or the budget runs out; whether it got there."""
        if ready[index] >= target:  # type: ignore[index]
            return True
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
            if ready[index] >= target:  # type: ignore[index]
                waited = clock() - start
                self.budget = min(self.max_seconds, max(self.budget, 2 * waited))
                self.backoff = 0
                return True
            yield_cpu()
            now = clock()
            if now - before > stolen:
                self.backoff = min(max(2 * self.backoff, self.BACKOFF_MIN), self.BACKOFF_MAX)
                self.skip = self.backoff
                return False
            if now >= end:
                break
            before = now
        self.budget = max(budget / 2, self.max_seconds / 64)
        return False


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
