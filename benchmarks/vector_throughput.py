"""Env-steps per second of 16 CartPole lanes with random actions: rlmesh against its peers.

All rows are measured in one run, interleaved over several rounds (the median round is
reported), with env servers in their own processes:

* in-process ``SyncVectorEnv(16)`` (the reference, 1.00x);
* Gymnasium ``AsyncVectorEnv(16, shared_memory=True)``;
* EnvPool's C++ CartPole with 16 envs on one thread: in process when ``import envpool`` works,
  else from a venv of its own (``pip install envpool``, cached under ``~/.cache/rlmesh-bench``;
  skipped, with why, when that fails);
* rlmesh, 16 lanes on one endpoint, with ``step`` and with ``step_async``/``step_wait`` (the
  next actions are drawn while the endpoint steps);
* rlmesh, 16 lanes over 2 endpoints (``rlmesh serve --num-envs 16 --servers 2``);
* the same over unix sockets, where same-host clients take the shared-memory fast path
  (steps of plain-array spaces travel as fixed-layout records);
* for scale, Gymnasium's NumPy-vectorised ``CartPoleVectorEnv(16)`` in process and served.

Targets: one endpoint at >= 0.5x of ``SyncVectorEnv(16)`` (its best row, tcp or unix socket);
the best rlmesh row >= 1.0x. Both rows are named in the JSON.
Machines shared with other work give noisy numbers: compare rows of the same run.

Usage (from the repository root): ``python -m benchmarks.vector_throughput [--iterations 2000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import gymnasium as gym
import numpy as np

import rlmesh.numpy as rn
from benchmarks import harness
from benchmarks.peer_venv import PeerVenv
from rlmesh.launch import launch_server

LANES = 16
ENV_ID = "CartPole-v1"


def _actions(dtype: Any = np.int64) -> Callable[[], np.ndarray]:
    pool = np.random.default_rng(0).integers(0, 2, (256, LANES)).astype(dtype)
    index = iter(range(1 << 62))
    return lambda: pool[next(index) % 256]


def _stepper(env: Any, dtype: Any = np.int64) -> Callable[[], Any]:
    draw = _actions(dtype)
    return lambda: env.step(draw())


def _pipelined(env: Any) -> Callable[[], Any]:
    """One call = wait for the step in flight, draw the next actions, send them.

    Random actions need no observation, so the next step is always queued at the endpoint
    when it finishes one: the endpoint never idles for the round trip (EnvPool's send/recv).
    """
    draw = _actions()
    env.step_async(draw())

    def call() -> Any:
        result = env.step_wait()
        env.step_async(draw())
        return result

    return call


def numpy_cartpole() -> Any:
    """Gymnasium's NumPy-vectorised CartPole with all lanes (served by the last row)."""
    return gym.make_vec(ENV_ID, LANES, vectorization_mode="vector_entry_point")


@contextlib.contextmanager
def _remote(
    servers: int, source: str = ENV_ID, num_envs: int | None = LANES, unix: bool = False
) -> Iterator[Callable[[], Any]]:
    """Serve the lanes (tcp loopback, or a unix socket with the shared-memory fast path).

    Yields a function that opens a fresh client session on them.
    """
    folder = tempfile.mkdtemp(prefix="rlmesh-bench-") if unix else ""
    address = f"unix://{folder}/env.sock" if unix else "tcp://127.0.0.1:0"
    server = launch_server(source, num_envs=num_envs, servers=servers, address=address, pythonpath=[harness.REPO_ROOT])
    with server, contextlib.ExitStack() as clients:
        if folder:
            clients.callback(shutil.rmtree, folder, True)

        def connect() -> Any:
            env = clients.enter_context(rn.RemoteVectorEnv(server.addresses if servers > 1 else server.address))
            env.reset(seed=0)
            return env

        yield connect


def _ratio(row: dict[str, Any]) -> float:
    return float(row["x_sync_vector_env"])


ENVPOOL = PeerVenv("envpool", ["envpool", "numpy"], "RLMESH_ENVPOOL_VENV")
ENVPOOL_SCRIPT = r"""
import json, sys, time
import numpy as np
import envpool
lanes, iterations = int(sys.argv[1]), int(sys.argv[2])
env = envpool.make_gymnasium("CartPole-v1", num_envs=lanes, batch_size=lanes, num_threads=1, seed=0)
env.reset()
pool = np.random.default_rng(0).integers(0, 2, (256, lanes)).astype(np.int32)
for i in range(100):
    env.step(pool[i % 256])
start = time.perf_counter()
for i in range(iterations):
    env.step(pool[i % 256])
print(json.dumps({"env_steps_per_s": lanes * iterations / (time.perf_counter() - start)}))
"""


def _envpool(iterations: int) -> tuple[Callable[[], float | None] | None, str]:
    """EnvPool's CartPole: in process when importable, else from its own venv (``pip install envpool``).

    Returns a function measuring env steps per second once, or None and why it is skipped.
    """
    try:
        import envpool
    except ImportError:
        if ENVPOOL.ensure() is None:
            return None, "pip install envpool failed (see stderr); EnvPool column skipped"

        def in_venv() -> float | None:
            result = ENVPOOL.run_script(ENVPOOL_SCRIPT, str(LANES), str(iterations), timeout=300)
            return None if result is None else float(result["env_steps_per_s"])

        return in_venv, "EnvPool, from its own venv (subprocess)"
    env = envpool.make_gymnasium(ENV_ID, num_envs=LANES, batch_size=LANES, num_threads=1, seed=0)
    env.reset()
    step = _stepper(env, np.int32)

    def in_process() -> float:
        return harness.time_calls(step, iterations=iterations, warmup=100)["per_s"] * LANES

    return in_process, "EnvPool, in process"


def main(argv: list[str] | None = None) -> None:
    """Measure every row, print the table and write benchmarks/results/vector_throughput.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="vector steps per row and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    args = parser.parse_args(argv)

    with contextlib.ExitStack() as stack:
        sync = stack.enter_context(contextlib.closing(gym.make_vec(ENV_ID, LANES, vectorization_mode="sync")))
        sync.reset(seed=0)
        asynchronous = stack.enter_context(
            contextlib.closing(
                gym.make_vec(ENV_ID, LANES, vectorization_mode="async", vector_kwargs={"shared_memory": True})
            )
        )
        asynchronous.reset(seed=0)
        numpy_vector = numpy_cartpole()
        stack.callback(numpy_vector.close)
        numpy_vector.reset(seed=0)
        envpool_rate, envpool_how = _envpool(args.iterations)
        one = stack.enter_context(_remote(1))
        two = stack.enter_context(_remote(2))
        one_unix = stack.enter_context(_remote(1, unix=True))
        two_unix = stack.enter_context(_remote(2, unix=True))
        served_numpy = stack.enter_context(_remote(1, "benchmarks.vector_throughput:numpy_cartpole", None))

        rows: list[tuple[str, Callable[[], Any] | None, str]] = [
            (f"in-process SyncVectorEnv({LANES})", _stepper(sync), "peer"),
            (f"Gymnasium AsyncVectorEnv({LANES}, shared_memory=True)", _stepper(asynchronous), "peer"),
            (f"EnvPool CartPole-v1 x{LANES} (C++, 1 thread)", envpool_rate, "peer-rate"),
            (f"rlmesh {LANES} lanes, 1 endpoint, step", _stepper(one()), "rlmesh"),
            (f"rlmesh {LANES} lanes, 1 endpoint, step_async/step_wait", _pipelined(one()), "rlmesh"),
            (f"rlmesh {LANES} lanes over 2 endpoints, step", _stepper(two()), "rlmesh"),
            (f"rlmesh {LANES} lanes over 2 endpoints, step_async/step_wait", _pipelined(two()), "rlmesh"),
            (f"rlmesh {LANES} lanes, 1 endpoint, unix socket + shared memory, step", _stepper(one_unix()), "rlmesh"),
            (
                f"rlmesh {LANES} lanes, 1 endpoint, unix socket + shared memory, step_async/step_wait",
                _pipelined(one_unix()),
                "rlmesh",
            ),
            (f"rlmesh {LANES} lanes over 2 endpoints, unix + shared memory, step", _stepper(two_unix()), "rlmesh"),
            (
                f"rlmesh {LANES} lanes over 2 endpoints, unix + shared memory, step_async/step_wait",
                _pipelined(two_unix()),
                "rlmesh",
            ),
            (f"in-process CartPoleVectorEnv({LANES}) (NumPy-vectorised env)", _stepper(numpy_vector), "scale"),
            (f"rlmesh {LANES} lanes, 1 endpoint serving CartPoleVectorEnv", _stepper(served_numpy()), "scale"),
        ]
        rates: dict[str, list[float]] = {name: [] for name, _, _ in rows}
        for _ in range(args.rounds):
            for name, call, kind in rows:
                if call is None:
                    continue
                if kind == "peer-rate":  # measures itself (EnvPool in its venv)
                    rate = call()
                    if rate is not None:
                        rates[name].append(rate)
                    continue
                stats = harness.time_calls(call, iterations=args.iterations, warmup=100)
                rates[name].append(stats["per_s"] * LANES)

    reference = statistics.median(rates[rows[0][0]])
    table = []
    for name, call, kind in rows:
        if call is None or not rates[name]:
            table.append({"measurement": name, "env_steps_per_s": "skipped", "x_sync_vector_env": envpool_how})
            continue
        rate = statistics.median(rates[name])
        row = {"measurement": name, "env_steps_per_s": rate, "x_sync_vector_env": rate / reference, "kind": kind}
        if kind == "peer-rate":
            row.update(kind="peer", how=envpool_how)
        table.append(row)
    harness.print_table(
        f"Vector throughput, {LANES} {ENV_ID} lanes, random actions (median of {args.rounds} rounds)",
        table,
        ["measurement", "env_steps_per_s", "x_sync_vector_env"],
    )
    measured = {row["measurement"]: row for row in table if row.get("kind") == "rlmesh"}
    one_endpoint = max((row for name, row in measured.items() if "1 endpoint" in name), key=_ratio)
    best = max(measured.values(), key=_ratio)
    targets = {
        "one_endpoint_at_least_0.5x": _ratio(one_endpoint) >= 0.5,
        "best_rlmesh_at_least_1.0x": _ratio(best) >= 1.0,
        "best_one_endpoint_row": one_endpoint["measurement"],
        "best_rlmesh_row": best["measurement"],
    }
    print(f"\ntargets: {targets}")
    path = harness.write_json(
        "vector_throughput",
        {"lanes": LANES, "iterations": args.iterations, "rounds": args.rounds, "rows": table, "targets": targets},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
