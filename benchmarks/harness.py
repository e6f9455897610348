"""Shared benchmark plumbing: server subprocesses, a raw pyzmq echo peer, timing, reporting.

Imported as ``benchmarks.harness`` by scripts run from the repository root as
``python -m benchmarks.NAME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rlmesh.launch import launch_server

RESULTS_DIR = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).parent.parent

RAW_ECHO_SERVER = r"""
import sys, zmq
ctx = zmq.Context()
sock = ctx.socket(zmq.ROUTER)
port = sock.bind_to_random_port("tcp://127.0.0.1")
print(port, flush=True)
payload = None
while True:
    frames = sock.recv_multipart(copy=False)
    if frames[1].bytes == b"stop":
        break
    if payload is None or len(frames) > 2:
        payload = frames[1:]
    sock.send_multipart([frames[0], *payload], copy=False)
"""


@contextlib.contextmanager
def rlmesh_server(source: str, *args: str, pythonpath: Sequence[str] = ()) -> Iterator[str]:
    """Run ``python -m rlmesh serve`` in a subprocess; yields its bound address."""
    with launch_server(source, *args, pythonpath=[*pythonpath, str(REPO_ROOT)]) as server:
        yield server.address


@contextlib.contextmanager
def raw_echo_server() -> Iterator[str]:
    """A bare pyzmq ROUTER in a subprocess that echoes each message: the stack's floor."""
    process = subprocess.Popen([sys.executable, "-c", RAW_ECHO_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        yield f"tcp://127.0.0.1:{int(process.stdout.readline())}"
    finally:
        process.kill()
        process.wait(10)
        if process.stdout:
            process.stdout.close()


RAW_SOCKET_ECHO_SERVER = r"""
import os, socket, sys
if sys.argv[1] == "unix":
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sys.argv[2])
    server.listen(1)
    print(sys.argv[2], flush=True)
else:
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
conn, _ = server.accept()
if sys.argv[1] == "tcp":
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while True:
    data = conn.recv(65536)
    if not data or data == b"stop":
        break
    conn.sendall(data)
conn.close()
server.close()
if sys.argv[1] == "unix":
    os.unlink(sys.argv[2])
"""


@contextlib.contextmanager
def _raw_socket_echo(family: str) -> Iterator[Callable[[bytes], bytes]]:
    """A bare Python echo peer (``family``: "unix" or "tcp") in a subprocess; yields ``round_trip``."""
    import socket

    with tempfile.TemporaryDirectory() as tmp:
        where = ["unix", str(Path(tmp) / "echo.sock")] if family == "unix" else ["tcp"]
        process = subprocess.Popen(
            [sys.executable, "-c", RAW_SOCKET_ECHO_SERVER, *where], stdout=subprocess.PIPE, text=True
        )
        client: socket.socket | None = None
        try:
            assert process.stdout is not None
            bound = process.stdout.readline().strip()
            if family == "unix":
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                client.connect(bound)
            else:
                client = socket.create_connection(("127.0.0.1", int(bound)))
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connected = client

            def round_trip(message: bytes) -> bytes:
                connected.sendall(message)
                return connected.recv(65536)

            yield round_trip
            client.sendall(b"stop")
        finally:
            if client is not None:
                client.close()
            process.wait(10)
            if process.stdout:
                process.stdout.close()


def raw_unix_echo() -> contextlib.AbstractContextManager[Callable[[bytes], bytes]]:
    """A bare Python unix-socket echo peer in a subprocess; yields a ``round_trip(message)``.

    The second floor for same-host transports: one ``sendall`` and one ``recv`` per side,
    no framing, no ZeroMQ. Messages must be small (one ``recv`` returns the whole echo).
    """
    return _raw_socket_echo("unix")


def raw_tcp_echo() -> contextlib.AbstractContextManager[Callable[[bytes], bytes]]:
    """A bare Python TCP echo peer on loopback (TCP_NODELAY), as :func:`raw_unix_echo`: the step stream's floor."""
    return _raw_socket_echo("tcp")


def time_calls(call: Callable[[], Any], *, iterations: int, warmup: int = 50, number: int = 1) -> dict[str, float]:
    """Wall time per call in microseconds (median, mean, p90) and calls per second.

    Each of ``iterations`` samples times ``number`` back-to-back calls, so calls far shorter
    than the clock's overhead can be timed with ``number > 1``.
    """
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(iterations):
        start = clock()
        for _ in range(number):
            call()
        samples.append((clock() - start) / 1000 / number)
    return summarize(samples)


def summarize(samples_us: Sequence[float]) -> dict[str, float]:
    """Median, mean, p90 and calls per second of per-call times in microseconds."""
    samples = sorted(samples_us)
    return {
        "median_us": statistics.median(samples),
        "mean_us": statistics.fmean(samples),
        "p90_us": samples[int(0.9 * (len(samples) - 1))],
        "per_s": 1e6 / statistics.fmean(samples),
        "iterations": len(samples),
    }


def time_in_turns(
    calls: dict[str, Callable[[], Any]], *, iterations: int, block: int = 100
) -> dict[str, dict[str, float]]:
    """Like :func:`time_calls` for several calls that take turns in blocks of ``block`` calls.

    Blocks (rather than alternating single calls) let each peer reach its steady state (a
    spinning server stays awake for back-to-back steps) while machine noise still hits all
    of them alike.
    """
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        for _ in range(block):
            call()
    clock = time.perf_counter_ns
    done = 0
    while done < iterations:
        count = min(block, iterations - done)
        for name, call in calls.items():
            bucket = samples[name]
            for _ in range(count):
                start = clock()
                call()
                bucket.append((clock() - start) / 1000)
        done += count
    results = {}
    for name, values in samples.items():
        values.sort()
        results[name] = {
            "median_us": statistics.median(values),
            "mean_us": statistics.fmean(values),
            "p90_us": values[int(0.9 * (len(values) - 1))],
            "per_s": 1e6 / statistics.fmean(values),
            "iterations": iterations,
        }
    return results


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def print_table(title: str, rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    """Print rows as an aligned text table."""
    cells = [[_fmt(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print(f"\n{title}")
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (with machine info) to benchmarks/results/NAME.json."""
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2, default=float))
    return path
