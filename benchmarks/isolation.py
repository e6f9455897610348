"""Session isolation under load and attack: latency, throughput, and the server's peak memory.

Measures, with every server in its own ``rlmesh serve`` process:
  * other clients' p50/p99 step latency with and without a session whose env sleeps 0.5 s
    per step;
  * total steps/s of 32 client processes on one CartPole server, with the client busy-poll
    off and at its default (adaptive) setting;
  * the server's peak RSS (VmHWM) under each hostile case: 40 requests carrying tensors of
    60 MiB + i bytes, a client that floods requests and never reads its replies, 1,000 idle
    handshaken clients, and one frame over a 1 MiB ``--max-message-bytes`` (with the time
    the sender takes to get its error);
  * steps/s of 2 clients on a factory server whose env burns ~2 ms of CPU per step, with
    thread and with process isolation;
  * the single-client CartPole step against the raw pyzmq round trip (the floor).

Usage (from the repository root): python -m benchmarks.isolation [--seconds 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import zmq
from gymnasium import spaces

import rlmesh.numpy as rn
from benchmarks import harness
from rlmesh import protocol as p
from rlmesh.connection import Connection
from rlmesh.launch import launch_server

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


# -- envs the servers load as ``benchmarks.isolation:make_...`` ----------------------------
class _Box4(gym.Env):
    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(4, np.float32), {}


class SleepyEnv(_Box4):
    """Action 1 sleeps half a second; action 0 returns at once."""

    def step(self, action: Any) -> Any:
        if int(action) == 1:
            time.sleep(0.5)
        return np.zeros(4, np.float32), 1.0, False, False, {}


class BusyEnv(_Box4):
    """Each step burns about 2 ms of CPU in Python (holding the GIL, as many envs do)."""

    def step(self, action: Any) -> Any:
        end = time.perf_counter() + 0.002
        while time.perf_counter() < end:
            pass
        return np.zeros(4, np.float32), 1.0, False, False, {}


class ImageEnv(_Box4):
    """84x84x4 uint8 observations: replies that fill a non-reading client's pipes fast."""

    observation_space = spaces.Box(0, 255, (84, 84, 4), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.full((84, 84, 4), 7, np.uint8), {}

    def step(self, action: Any) -> Any:
        return np.full((84, 84, 4), 7, np.uint8), 0.0, False, False, {}


def make_sleepy() -> gym.Env:
    """Factory for ``rlmesh serve benchmarks.isolation:make_sleepy``."""
    return SleepyEnv()


def make_busy() -> gym.Env:
    """Factory for ``rlmesh serve benchmarks.isolation:make_busy``."""
    return BusyEnv()


def make_image() -> gym.Env:
    """Factory for ``rlmesh serve benchmarks.isolation:make_image``."""
    return ImageEnv()


def serve(source: str, *args: str) -> Any:
    return launch_server(source, *args, pythonpath=[REPO_ROOT])


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak) and VmRSS (now) of a process, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmHWM", "VmRSS"):
            fields[name] = int(value.split()[0])
    return fields


def raw_dealer(address: str, **options: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def header(op: str, request_id: int, body: Any, descriptors: list | None = None) -> bytes:
    return msgpack.packb([op, request_id, descriptors or [], msgpack.packb(body)])


HELLO = {"protocol": p.PROTOCOL_VERSION}


# -- 1. a slow session next to fast ones -----------------------------------------------------
def slow_session(seconds: float) -> list[dict[str, Any]]:
    rows = []
    with serve("benchmarks.isolation:make_sleepy") as server:
        for with_slow in (False, True):
            fast = rn.RemoteEnv(server.address)
            fast.reset(seed=0)
            stop = threading.Event()
            slow_steps = [0]

            def crawl(stop: threading.Event = stop, counter: list[int] = slow_steps) -> None:
                with rn.RemoteEnv(server.address) as slow:
                    slow.reset(seed=0)
                    while not stop.is_set():
                        slow.step(1)
                        counter[0] += 1

            crawler = threading.Thread(target=crawl) if with_slow else None
            if crawler is not None:
                crawler.start()
                time.sleep(0.2)
            samples = []
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                started = time.perf_counter()
                fast.step(0)
                samples.append((time.perf_counter() - started) * 1e6)
            stop.set()
            if crawler is not None:
                crawler.join()
            fast.close()
            samples.sort()
            rows.append(
                {
                    "case": "with a 0.5 s/step session" if with_slow else "alone",
                    "p50_us": statistics.median(samples),
                    "p99_us": samples[int(0.99 * (len(samples) - 1))],
                    "steps_per_s": len(samples) / seconds,
                    "slow_session_steps": slow_steps[0],
                }
            )
    return rows


# -- 2. 32 client processes, busy-poll off and default ---------------------------------------
def _client_process(address: str, ready: Any, go: Any, start: Any, seconds: float, queue: Any) -> None:
    from rlmesh.connection import DEFAULT_BUSY_POLL_SECONDS

    envs = [rn.RemoteEnv(address, busy_poll_seconds=spin) for spin in (0.0, DEFAULT_BUSY_POLL_SECONDS)]
    for env in envs:
        env.reset(seed=0)
    ready.put(True)
    go.wait()
    counts = [0, 0]
    for round_ in range(4):  # off, default, off, default: both modes see the same load
        index = round_ % 2
        env = envs[index]
        begin = start.value + round_ * (seconds + 1.0)  # every round at fixed times, for all
        time.sleep(max(0.0, begin - time.time()))
        steps, end = 0, begin + seconds
        while time.time() < end:
            _, _, terminated, truncated, _ = env.step(steps % 2)
            steps += 1
            if terminated or truncated:
                env.reset()
        counts[index] += steps
    for env in envs:
        env.close()
    queue.put(counts)


def crowd(seconds: float, clients: int = 32) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    ready, results_queue = context.Queue(), context.Queue()
    go, start = context.Event(), context.Value("d", 0.0)
    with serve("CartPole-v1", "--max-sessions", str(2 * clients)) as server:
        processes = [
            context.Process(target=_client_process, args=(server.address, ready, go, start, seconds, results_queue))
            for _ in range(clients)
        ]
        for process in processes:
            process.start()
        for _ in processes:  # every process has imported, connected and reset
            ready.get(timeout=300)
        start.value = time.time() + 1.0
        go.set()
        results = [results_queue.get(timeout=4 * seconds + 120) for _ in processes]
        for process in processes:
            process.join(30)
    return [
        {
            "client_busy_poll": name,
            "clients": clients,
            "total_steps_per_s": sum(r[index] for r in results) / (2 * seconds),
        }
        for index, name in enumerate(("off", "default (adaptive)"))
    ]


# -- 3. hostile peers and the server's memory ------------------------------------------------
def big_tensors(requests: int = 40) -> dict[str, Any]:
    with serve("CartPole-v1") as server:
        pid = server.process.pid
        before = memory_kib(pid)
        sock = raw_dealer(server.address, RCVTIMEO=30_000)
        sock.send(header("hello", 1, HELLO))
        sock.recv_multipart()
        for i in range(requests):
            size = 60 * MIB + i
            sock.send_multipart([header("step", 2 + i, None, [[5, [size]]]), bytes(size)], copy=False)
            sock.recv_multipart()  # an invalid-action error: the env wants an int
        time.sleep(0.5)
        after = memory_kib(pid)
        sock.close()
    return {
        "case": f"{requests} requests of 60 MiB + i bytes",
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "rss_after_mib": after["VmRSS"] / 1024,
        "note": "served; memory returned",
    }


def flooder(requests: int = 3000) -> dict[str, Any]:
    with serve("benchmarks.isolation:make_image", "--send-timeout", "2") as server:
        pid = server.process.pid
        before = memory_kib(pid)
        good = rn.RemoteEnv(server.address)
        good.reset(seed=0)
        sock = raw_dealer(server.address, RCVHWM=1, RCVBUF=4096, SNDTIMEO=0)
        sock.send(header("hello", 1, HELLO))
        for request_id in range(2, requests):
            try:
                sock.send(header("reset", request_id, {"seed": None, "options": None}))
            except zmq.Again:
                time.sleep(0.001)
        samples = []
        end = time.perf_counter() + 4.0  # past the 2 s send timeout: the flooder is dropped
        while time.perf_counter() < end:
            started = time.perf_counter()
            good.step(0)
            samples.append((time.perf_counter() - started) * 1e6)
        sock.close()
        with rn.RemoteEnv(server.address) as newcomer:
            newcomer.reset(seed=1)
        good.close()
        after = memory_kib(pid)
        alive = server.process.poll() is None
    return {
        "case": f"non-reading flooder ({requests} requests, 28 KB replies)",
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "rss_after_mib": after["VmRSS"] / 1024,
        "note": f"other client p50 {statistics.median(samples):.0f} us; server alive: {alive}",
    }


def idle_crowd(clients: int = 1000) -> dict[str, Any]:
    with serve("CartPole-v1") as server:
        pid = server.process.pid
        before = memory_kib(pid)
        sockets = [raw_dealer(server.address, RCVTIMEO=20_000) for _ in range(clients)]
        for sock in sockets:
            sock.send(header("hello", 1, HELLO))
        kinds: dict[str, int] = {}
        for sock in sockets:
            kind, _, _, body = msgpack.unpackb(sock.recv_multipart()[0])
            key = kind if kind == "ok" else msgpack.unpackb(body)["code"]
            kinds[key] = kinds.get(key, 0) + 1
        after = memory_kib(pid)
        for sock in sockets:
            sock.close()
    return {
        "case": f"{clients} idle handshaken clients",
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "rss_after_mib": after["VmRSS"] / 1024,
        "note": ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items())),
    }


def over_limit_frame() -> dict[str, Any]:
    with serve("CartPole-v1", "--max-message-bytes", str(MIB)) as server:
        pid = server.process.pid
        before = memory_kib(pid)
        connection = Connection(server.address)  # no handshake: it does not know the limit
        started = time.perf_counter()
        try:
            connection.request(p.STEP, np.zeros(MIB + 1, np.uint8), timeout=60)
            outcome = "no error"
        except Exception as error:  # the point: which error, and how soon
            outcome = type(error).__name__
        took = time.perf_counter() - started
        connection.close()
        with rn.RemoteEnv(server.address) as env:  # the server still serves
            env.reset(seed=0)
        after = memory_kib(pid)
    return {
        "case": "one frame over --max-message-bytes 1 MiB",
        "rss_before_mib": before["VmRSS"] / 1024,
        "peak_mib": after["VmHWM"] / 1024,
        "rss_after_mib": after["VmRSS"] / 1024,
        "note": f"sender got {outcome} after {took:.2f} s",
    }


# -- 4. thread against process isolation -----------------------------------------------------
def isolation_modes(seconds: float) -> list[dict[str, Any]]:
    rows = []
    for mode in ("thread", "process"):
        with serve("benchmarks.isolation:make_busy", "--isolation", mode) as server:
            counts = [0, 0]

            def drive(index: int, address: str = server.address, counts: list[int] = counts) -> None:
                with rn.RemoteEnv(address) as env:
                    env.reset(seed=0)
                    end = time.perf_counter() + seconds
                    while time.perf_counter() < end:
                        env.step(0)
                        counts[index] += 1

            threads = [threading.Thread(target=drive, args=(index,)) for index in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            rows.append(
                {"isolation": mode, "clients": 2, "env_cpu_ms_per_step": 2.0, "steps_per_s": sum(counts) / seconds}
            )
    return rows


# -- 5. the floor ----------------------------------------------------------------------------
def floor(iterations: int) -> list[dict[str, Any]]:
    """The raw pyzmq round trip and a CartPole step, taking turns in blocks of 100 (noise hits both alike)."""
    payload = msgpack.packb(["step", 1, [], msgpack.packb([[0.1, 0.2, 0.3, 0.4], 1.0, False, False, {}])])
    with (
        harness.raw_echo_server() as address,
        serve("CartPole-v1") as server,
        rn.RemoteEnv(server.address) as env,
    ):
        sock = raw_dealer(address)

        def raw() -> None:
            sock.send(payload)
            sock.recv_multipart()

        env.reset(seed=0)
        state = {"t": 0}

        def step() -> None:
            _, _, terminated, truncated, _ = env.step(state["t"] % 2)
            state["t"] += 1
            if terminated or truncated:
                env.reset()

        timed = harness.time_in_turns({"raw": raw, "step": step}, iterations=iterations)
        raw_stats, step_stats = timed["raw"], timed["step"]
        sock.send(b"stop")
        sock.close()
    return [
        {"measurement": "raw pyzmq round trip", "median_us": raw_stats["median_us"], "x_floor": 1.0},
        {
            "measurement": "rlmesh CartPole step (thread isolation)",
            "median_us": step_stats["median_us"],
            "x_floor": step_stats["median_us"] / raw_stats["median_us"],
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each timed phase")
    parser.add_argument("--iterations", type=int, default=3000, help="steps for the floor comparison")
    args = parser.parse_args()

    slow = slow_session(args.seconds)
    harness.print_table(
        "Other clients' step latency (factory server, thread isolation)",
        slow,
        ["case", "p50_us", "p99_us", "steps_per_s", "slow_session_steps"],
    )
    crowd_rows = crowd(args.seconds)
    harness.print_table(
        "32 client processes on one CartPole server",
        crowd_rows,
        ["client_busy_poll", "clients", "total_steps_per_s"],
    )
    hostile = [big_tensors(), flooder(), idle_crowd(), over_limit_frame()]
    harness.print_table(
        "Server memory under hostile peers (MiB; peak = VmHWM)",
        hostile,
        ["case", "rss_before_mib", "peak_mib", "rss_after_mib", "note"],
    )
    modes = isolation_modes(args.seconds)
    harness.print_table(
        "2 clients, env burning 2 ms CPU per step",
        modes,
        ["isolation", "clients", "env_cpu_ms_per_step", "steps_per_s"],
    )
    floor_rows = floor(args.iterations)
    harness.print_table("Single-client step against the floor", floor_rows, ["measurement", "median_us", "x_floor"])
    path = harness.write_json(
        "isolation",
        {
            "slow_session": slow,
            "crowd": crowd_rows,
            "hostile_memory": hostile,
            "isolation_modes": modes,
            "floor": floor_rows,
            "note": "2-core machine shared with other jobs: absolute figures are noisy; compare rows of one run",
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
