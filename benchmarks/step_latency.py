"""Step round trip and vector throughput, against the floor and peers measured in the same run.

Measures, with the env server in a separate process:
  * one CartPole ``step`` round trip over tcp loopback (over the step stream, the default, and
    over ZeroMQ only) and over a unix socket (ZeroMQ only);
  * a raw pyzmq DEALER/ROUTER round trip of a ~100-byte msgpack message (this stack's floor),
    and a raw Python TCP ping-pong of the same bytes;
  * an in-process ``gymnasium`` CartPole step;
  * a 16-lane vector endpoint's env-steps per second against an in-process SyncVectorEnv(16);
  * the original RLMesh 0.1.0 (PyPI), from its own venv, when it can be installed;
  * the cost of CURVE (authentication and encryption): a CartPole step and an 84x84x4 uint8
    step over tcp loopback with and without CURVE, both servers up and stepped in alternating blocks;
  * same host: a CartPole step over the shared-memory fast path against a raw Python
    unix-socket ping-pong (the second floor), the raw pyzmq round trip and the same server
    over its unix socket with ZeroMQ only, taking turns so noise hits them alike; with
    ``--sandbox``, a SandboxEnv CartPole step (Docker, fast path) as well.

Targets (issue 2): step within 1.5x of the raw floor; 16 lanes at >= 50% of in-process.
Targets (same host): fast-path step <= 0.5x the raw pyzmq round trip and <= 2x the raw unix
ping-pong; SandboxEnv step <= 1.2x the plain unix endpoint's fast-path step.

Usage (from the repository root):
  python -m benchmarks.step_latency [--iterations 3000] [--skip-original] [--curve-only] [--sandbox]
(--curve-only measures only the CURVE table and writes results/step_latency_curve.json.)
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import msgpack
import numpy as np
import zmq

import rlmesh.numpy as rn
from benchmarks import harness, original_rlmesh
from rlmesh.security import generate_keypair

BENCH_DIR = str(Path(__file__).resolve().parent)
FRAME_ENV = ("decode_latency:make_fixed_env", "--kwarg", "shape=[84,84,4]", "--kwarg", 'dtype="uint8"')

ORIGINAL_SCRIPT = r"""
import json, sys, time, multiprocessing as mp
def serve(q, lanes):
    import gymnasium as gym, rlmesh
    if lanes == 0:
        env = gym.make("CartPole-v1")
    else:
        env = gym.make_vec("CartPole-v1", num_envs=lanes, vectorization_mode="sync")
    s = rlmesh.EnvServer(env, "tcp://127.0.0.1:0")
    q.put(s.address)
    s.serve()
def measure(lanes, iterations):
    import numpy as np, rlmesh.numpy as rn
    q = mp.Queue(); p = mp.Process(target=serve, args=(q, lanes), daemon=True); p.start()
    addr = q.get(timeout=120)
    env = (rn.RemoteEnv if lanes == 0 else rn.RemoteVectorEnv)(addr)
    env.reset(seed=0)
    action = 0 if lanes == 0 else np.zeros(lanes, dtype=np.int64)
    for _ in range(20):
        out = env.step(action)
        if lanes == 0 and (out[2] or out[3]): env.reset()
    t = time.perf_counter()
    for _ in range(iterations):
        out = env.step(action)
        if lanes == 0 and (out[2] or out[3]): env.reset()
    per = (time.perf_counter() - t) / iterations
    p.kill()
    return per
if __name__ == "__main__":
    it = int(sys.argv[1])
    single = measure(0, it)
    vector = measure(16, max(100, it // 4))
    print(json.dumps({"step_us": single * 1e6, "vector16_env_steps_per_s": 16 / vector}))
"""


def time_single_steps(env: object, iterations: int) -> dict[str, float]:
    """Time ``env.step`` with alternating actions, resetting at episode ends."""
    return harness.time_calls(stepper(env), iterations=iterations)  # type: ignore[arg-type]


def over_sockets(iterations: int) -> dict[str, dict[str, float]]:
    """The raw pyzmq floor, a raw TCP ping-pong, and a CartPole step over tcp (step stream and
    ZeroMQ only) and over a unix socket (ZeroMQ only).

    They take turns in blocks of 100 calls, so that machine noise, which moves every
    figure here by up to 2x over minutes, hits them alike and their ratios hold.
    """
    message = {"op": "step", "id": 1, "action": 1, "observation": [0.1, 0.2, 0.3, 0.4], "reward": 1.0}
    payload = msgpack.packb({**message, "terminated": False, "truncated": False, "info": {}})
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(stack.enter_context(harness.raw_echo_server()))
        stack.callback(socket.close)
        tcp_round_trip = stack.enter_context(harness.raw_tcp_echo())

        def raw() -> None:
            socket.send(payload)
            msgpack.unpackb(socket.recv())

        tcp_address = stack.enter_context(harness.rlmesh_server("CartPole-v1"))
        tcp = stack.enter_context(rn.RemoteEnv(tcp_address))
        assert tcp._group.members[0].connection.uses_tcp_stream, "the step stream was not negotiated"  # type: ignore[attr-defined]
        unix_address = stack.enter_context(
            harness.rlmesh_server("CartPole-v1", "--address", f"unix://{directory}/e.sock")
        )
        unix = stack.enter_context(rn.RemoteEnv(unix_address, shared_memory=False))
        calls = {
            "raw": raw,
            "raw_tcp": lambda: msgpack.unpackb(tcp_round_trip(payload)),
            "tcp": stepper(tcp),
            "tcp_zmq_only": stepper(stack.enter_context(rn.RemoteEnv(tcp_address, tcp_stream=False))),
            "unix": stepper(unix),
        }
        results = harness.time_in_turns(calls, iterations=iterations)
        socket.send(b"stop")
    results["raw"]["message_bytes"] = len(payload)
    return results


def curve_cost(iterations: int, block: int = 50) -> list[dict[str, object]]:
    """Step latency with and without CURVE, both servers up at once and stepped in alternating blocks.

    Interleaving small blocks puts both under the same machine load, which matters more here
    than on a quiet machine: the difference is a few microseconds per step. Clients do not
    busy-poll here, so the client's CPU time per step is its own work (encode, encrypt,
    decrypt, decode), which machine load disturbs far less than wall time. The plain client
    stays on ZeroMQ (no step stream, which CURVE endpoints never offer), so the difference is
    the encryption alone; the step stream's own gain is in the step round trip table.
    """
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as keys:
        server_public, server_secret = generate_keypair(keys, "server")
        _, client_secret = generate_keypair(f"{keys}/clients", "bench")
        server_args = ("--curve-secret-key", str(server_secret), "--curve-authorized-keys", f"{keys}/clients")
        client_keys = {"curve_server_key": server_public, "curve_secret_key": client_secret}
        for label, source in (("CartPole-v1", ("CartPole-v1",)), ("84x84x4 uint8", FRAME_ENV)):
            with (
                harness.rlmesh_server(*source, pythonpath=[BENCH_DIR]) as plain_address,
                harness.rlmesh_server(*source, *server_args, pythonpath=[BENCH_DIR]) as curve_address,
                rn.RemoteEnv(plain_address, busy_poll_seconds=0.0, tcp_stream=False) as plain_env,
                rn.RemoteEnv(curve_address, busy_poll_seconds=0.0, **client_keys) as curve_env,  # type: ignore[arg-type]
            ):
                samples: dict[str, list[float]] = {"plain": [], "curve": []}
                cpu_ns = {"plain": 0, "curve": 0}
                envs = {"plain": plain_env, "curve": curve_env}
                for env in envs.values():
                    env.reset(seed=0)
                    _step_block(env, 50, [])  # warm-up
                for index in range(max(1, iterations // block)):
                    order = ("plain", "curve") if index % 2 == 0 else ("curve", "plain")
                    for mode in order:
                        cpu = time.process_time_ns()
                        _step_block(envs[mode], block, samples[mode])
                        cpu_ns[mode] += time.process_time_ns() - cpu
            plain, curve = harness.summarize(samples["plain"]), harness.summarize(samples["curve"])
            plain["client_cpu_us"] = cpu_ns["plain"] / 1000 / len(samples["plain"])
            curve["client_cpu_us"] = cpu_ns["curve"] / 1000 / len(samples["curve"])
            rows.append(
                {
                    "env": label,
                    "plain_median_us": plain["median_us"],
                    "curve_median_us": curve["median_us"],
                    "curve_added_us": curve["median_us"] - plain["median_us"],
                    "x_plain": curve["median_us"] / plain["median_us"],
                    "plain_client_cpu_us": plain["client_cpu_us"],
                    "curve_client_cpu_us": curve["client_cpu_us"],
                    "plain": plain,
                    "curve": curve,
                }
            )
    harness.print_table(
        f"CURVE cost: step round trip over tcp loopback ({iterations} steps each, alternating blocks of {block})",
        rows,
        [
            "env",
            "plain_median_us",
            "curve_median_us",
            "curve_added_us",
            "x_plain",
            "plain_client_cpu_us",
            "curve_client_cpu_us",
        ],
    )
    return rows


def _step_block(env: object, steps: int, samples: list[float]) -> None:
    """Step ``env`` ``steps`` times (resetting at episode ends), appending each step's microseconds."""
    clock = time.perf_counter_ns
    for t in range(steps):
        start = clock()
        _, _, terminated, truncated, _ = env.step(t & 1)  # type: ignore[attr-defined]
        samples.append((clock() - start) / 1000)
        if terminated or truncated:
            env.reset()  # type: ignore[attr-defined]


def stepper(env: object) -> object:
    """A zero-argument CartPole step with alternating actions, resetting at episode ends."""
    env.reset(seed=0)  # type: ignore[attr-defined]
    state = {"t": 0}

    def step() -> None:
        state["t"] += 1
        _, _, terminated, truncated, _ = env.step(state["t"] & 1)  # type: ignore[attr-defined]
        if terminated or truncated:
            env.reset()  # type: ignore[attr-defined]

    return step


def uses_shared_memory(env: object) -> bool:
    """Whether a client's (first) session negotiated the shared-memory plane."""
    return env._group.members[0].connection.uses_shared_memory  # type: ignore[attr-defined]


def same_host(iterations: int, sandbox: bool) -> dict[str, dict[str, float]]:
    """The fast path against both floors and ZeroMQ over the same unix socket, in turns."""
    message = msgpack.packb({"op": "step", "id": 1, "action": 1, "observation": [0.1, 0.2, 0.3, 0.4]})
    with contextlib.ExitStack() as stack:
        directory = stack.enter_context(tempfile.TemporaryDirectory())
        zmq_address = stack.enter_context(harness.raw_echo_server())
        unix_round_trip = stack.enter_context(harness.raw_unix_echo())
        address = stack.enter_context(harness.rlmesh_server("CartPole-v1", "--address", f"unix://{directory}/env.sock"))
        socket = zmq.Context.instance().socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(zmq_address)
        stack.callback(socket.close)

        def zmq_round_trip() -> None:
            socket.send(message)
            msgpack.unpackb(socket.recv())

        fast = stack.enter_context(rn.RemoteEnv(address))
        assert uses_shared_memory(fast), "the fast path was not negotiated"
        calls = {
            "raw_zmq": zmq_round_trip,
            "raw_unix": lambda: msgpack.unpackb(unix_round_trip(message)),
            "fast_path": stepper(fast),
            "unix_zmq_only": stepper(stack.enter_context(rn.RemoteEnv(address, shared_memory=False))),
        }
        if sandbox:
            import os

            os.environ.setdefault("RLMESH_SANDBOX_BASE_IMAGE", "rlmesh/python-base:3.11")
            box = stack.enter_context(rn.SandboxEnv("CartPole-v1", rlmesh_package="local"))
            assert uses_shared_memory(box.client), "the sandbox did not negotiate the fast path"
            calls["sandbox_fast_path"] = stepper(box)
        results = harness.time_in_turns(calls, iterations=iterations)
        socket.send(b"stop")
        return results


def local_single(iterations: int) -> dict[str, float]:
    env = gym.make("CartPole-v1")
    try:
        return time_single_steps(env, iterations)
    finally:
        env.close()


def vector_throughput(envs: dict[str, object], iterations: int, lanes: int) -> list[dict[str, float]]:
    """Env-steps per second of each vector env with random actions, taking turns in blocks of 50."""
    actions = np.random.default_rng(0).integers(0, 2, (64, lanes))
    calls = {}
    for name, env in envs.items():
        env.reset(seed=0)  # type: ignore[attr-defined]
        state = {"t": 0}

        def step(env: object = env, state: dict[str, int] = state) -> None:
            state["t"] += 1
            env.step(actions[state["t"] % 64])  # type: ignore[attr-defined]

        calls[name] = step
    results = harness.time_in_turns(calls, iterations=iterations, block=50)
    for stats in results.values():
        stats["env_steps_per_s"] = lanes * stats["per_s"]
    return [results[name] for name in envs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--lanes", type=int, default=16)
    parser.add_argument("--skip-original", action="store_true", help="do not build or run the original rlmesh")
    parser.add_argument("--curve-only", action="store_true", help="measure only the CURVE cost table")
    parser.add_argument("--sandbox", action="store_true", help="also time a SandboxEnv step (needs Docker)")
    args = parser.parse_args()
    n = args.iterations
    command = "python -m benchmarks.step_latency " + " ".join(sys.argv[1:])
    if args.curve_only:
        path = harness.write_json("step_latency_curve", {"command": command, "curve": curve_cost(n)})
        print(f"wrote {path}")
        return

    near = same_host(n, args.sandbox)

    sockets = over_sockets(n)
    floor, tcp, unix = sockets["raw"], sockets["tcp"], sockets["unix"]
    local = local_single(n)
    lanes = args.lanes
    with harness.rlmesh_server("CartPole-v1", "--num-envs", str(lanes)) as address, rn.RemoteVectorEnv(address) as env:
        local_env = gym.make_vec("CartPole-v1", num_envs=lanes, vectorization_mode="sync")
        remote_vec, local_vec = vector_throughput({"remote": env, "local": local_env}, max(200, n // 4), lanes)
        local_env.close()
    original = None if args.skip_original else original_rlmesh.run_script(ORIGINAL_SCRIPT, str(min(n, 1000)))

    floor_us = floor["median_us"]
    rows = [
        {
            "measurement": "raw pyzmq round trip (~100 B msgpack)",
            "median_us": floor_us,
            "mean_us": floor["mean_us"],
            "x_floor": 1.0,
        },
        {
            "measurement": "raw Python TCP ping-pong (~100 B)",
            "median_us": sockets["raw_tcp"]["median_us"],
            "mean_us": sockets["raw_tcp"]["mean_us"],
            "x_floor": sockets["raw_tcp"]["median_us"] / floor_us,
        },
        {
            "measurement": "rlmesh CartPole step, tcp loopback (step stream, default)",
            "median_us": tcp["median_us"],
            "mean_us": tcp["mean_us"],
            "x_floor": tcp["median_us"] / floor_us,
        },
        {
            "measurement": "rlmesh CartPole step, tcp loopback (ZeroMQ only)",
            "median_us": sockets["tcp_zmq_only"]["median_us"],
            "mean_us": sockets["tcp_zmq_only"]["mean_us"],
            "x_floor": sockets["tcp_zmq_only"]["median_us"] / floor_us,
        },
        {
            "measurement": "rlmesh CartPole step, unix socket (ZeroMQ only)",
            "median_us": unix["median_us"],
            "mean_us": unix["mean_us"],
            "x_floor": unix["median_us"] / floor_us,
        },
        {
            "measurement": "in-process gymnasium step",
            "median_us": local["median_us"],
            "mean_us": local["mean_us"],
            "x_floor": local["median_us"] / floor_us,
        },
    ]
    if original:
        rows.append(
            {
                "measurement": "original rlmesh 0.1.0 step, tcp (mean)",
                "median_us": "",
                "mean_us": original["step_us"],
                "x_floor": original["step_us"] / floor_us,
            }
        )
    harness.print_table(
        "Step round trip (server in another process)", rows, ["measurement", "median_us", "mean_us", "x_floor"]
    )
    vec_rows = [
        {
            "measurement": f"in-process SyncVectorEnv({lanes})",
            "env_steps_per_s": local_vec["env_steps_per_s"],
            "x_in_process": 1.0,
        },
        {
            "measurement": f"rlmesh {lanes}-lane vector endpoint, tcp",
            "env_steps_per_s": remote_vec["env_steps_per_s"],
            "x_in_process": remote_vec["env_steps_per_s"] / local_vec["env_steps_per_s"],
        },
    ]
    if original:
        vec_rows.append(
            {
                "measurement": f"original rlmesh 0.1.0, {lanes} lanes",
                "env_steps_per_s": original["vector16_env_steps_per_s"],
                "x_in_process": original["vector16_env_steps_per_s"] / local_vec["env_steps_per_s"],
            }
        )
    harness.print_table("Vector throughput", vec_rows, ["measurement", "env_steps_per_s", "x_in_process"])
    near_zmq, near_unix = near["raw_zmq"]["median_us"], near["raw_unix"]["median_us"]
    labels = {
        "raw_zmq": "raw pyzmq round trip (~60 B msgpack)",
        "raw_unix": "raw Python unix-socket ping-pong (~60 B)",
        "fast_path": "rlmesh CartPole step, unix + shared memory",
        "unix_zmq_only": "rlmesh CartPole step, unix, ZeroMQ only",
        "sandbox_fast_path": "SandboxEnv CartPole step, shared memory",
    }
    harness.print_table(
        "Same host (server in another process; peers take turns in blocks of 100)",
        [
            {
                "measurement": labels[name],
                "median_us": stats["median_us"],
                "p90_us": stats["p90_us"],
                "x_raw_zmq": stats["median_us"] / near_zmq,
                "x_raw_unix": stats["median_us"] / near_unix,
            }
            for name, stats in near.items()
        ],
        ["measurement", "median_us", "p90_us", "x_raw_zmq", "x_raw_unix"],
    )
    fast_us = near["fast_path"]["median_us"]
    verdict = {
        "step_within_1.5x_floor": tcp["median_us"] <= 1.5 * floor_us,
        "vector_at_least_50pct_in_process": remote_vec["env_steps_per_s"] >= 0.5 * local_vec["env_steps_per_s"],
        "fast_path_at_most_0.5x_raw_zmq": fast_us <= 0.5 * near_zmq,
        "fast_path_within_2x_raw_unix": fast_us <= 2 * near_unix,
    }
    if "sandbox_fast_path" in near:
        verdict["sandbox_within_1.2x_fast_path"] = near["sandbox_fast_path"]["median_us"] <= 1.2 * fast_us
    print(f"\ntargets: {verdict}")
    curve = curve_cost(n)
    path = harness.write_json(
        "step_latency",
        {
            "command": command,
            "raw_floor": floor,
            "raw_tcp": sockets["raw_tcp"],
            "tcp": tcp,
            "tcp_zmq_only": sockets["tcp_zmq_only"],
            "unix": unix,
            "in_process": local,
            "vector_remote": remote_vec,
            "vector_in_process": local_vec,
            "original_rlmesh_0_1_0": original,
            "same_host": near,
            "targets": verdict,
            "curve": curve,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
