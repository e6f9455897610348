"""Env-steps/s of one vector env over 1, 2, 4 servers: Ray-hosted against locally launched.

Each server serves 8 CartPole lanes; the driver joins every server into one
``rlmesh.numpy.RemoteVectorEnv`` and steps it with random actions. The peers, measured in the
same run and interleaved round by round (so machine noise hits both alike):
  * ``ray``: servers started by ``launch_servers`` as Ray actors (Ray started once, up front);
  * ``local``: the same number of ``rlmesh serve`` processes from ``rlmesh.launch.launch_server``.
Also reported: the launch time of each (until every address is known), and Ray's own start.
The point (issue target): Ray adds no per-step cost, Ray-hosted within 10% of local at each count.

Ray runs only inside a loopback-only network namespace: run outside one, this script re-runs
itself inside one (``rlmesh.integrations.ray.namespace``), or stops with the reason.

Usage (from the repository root):
``python -m benchmarks.ray_scaling [--counts 1 2 4] [--lanes 8] [--steps 2000] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

import rlmesh.numpy as rn
from benchmarks import harness
from rlmesh.launch import launch_server


def steps_per_second(addresses: Sequence[str], lanes: int, steps: int) -> float:
    """Env-steps/s (lanes x steps / wall time) of one vector env over ``addresses``."""
    with rn.RemoteVectorEnv(list(addresses)) as env:
        env.reset(seed=0)
        actions = np.random.default_rng(0).integers(0, 2, (steps + 100, lanes))
        for t in range(100):  # warm up connections and caches
            env.step(actions[t])
        start = time.perf_counter()
        for t in range(100, steps + 100):
            env.step(actions[t])
        return lanes * steps / (time.perf_counter() - start)


def measure_ray(count: int, lanes: int, steps: int) -> tuple[float, float]:
    """(launch seconds, env-steps/s) for ``count`` Ray-hosted servers."""
    from rlmesh.integrations.ray import launch_servers

    start = time.perf_counter()
    with launch_servers("CartPole-v1", num_servers=count, num_envs=lanes, num_cpus_per_server=0.5) as servers:
        launch = time.perf_counter() - start
        return launch, steps_per_second(servers.addresses, lanes * count, steps)


def measure_local(count: int, lanes: int, steps: int) -> tuple[float, float]:
    """(launch seconds, env-steps/s) for ``count`` locally launched ``rlmesh serve`` processes."""
    start = time.perf_counter()
    with launch_server("CartPole-v1", num_envs=lanes * count, servers=count) as server:
        launch = time.perf_counter() - start
        return launch, steps_per_second(server.addresses, lanes * count, steps)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="server counts to measure")
    parser.add_argument("--lanes", type=int, default=8, help="CartPole lanes per server")
    parser.add_argument("--steps", type=int, default=2000, help="vector steps per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per count (median reported)")
    args = parser.parse_args(argv)

    from rlmesh.integrations.ray import namespace

    if not namespace.in_loopback_namespace():
        problem = namespace.namespace_problem()
        if problem is not None:
            print(f"ray_scaling: Ray runs only in a loopback-only network namespace: {problem}", file=sys.stderr)
            return 2
        return namespace.run_in_namespace([sys.executable, "-m", "benchmarks.ray_scaling", *sys.argv[1:]]).returncode

    import ray

    start = time.perf_counter()
    ray.init(num_cpus=max(args.counts), _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - start
    rows = []
    try:
        for count in args.counts:
            samples: dict[str, list[tuple[float, float]]] = {"ray": [], "local": []}
            for _ in range(args.rounds):
                samples["ray"].append(measure_ray(count, args.lanes, args.steps))
                samples["local"].append(measure_local(count, args.lanes, args.steps))
            rate = {peer: statistics.median(s[1] for s in runs) for peer, runs in samples.items()}
            launch = {peer: statistics.median(s[0] for s in runs) for peer, runs in samples.items()}
            rows.append(
                {
                    "servers": count,
                    "lanes": count * args.lanes,
                    "ray steps/s": rate["ray"],
                    "local steps/s": rate["local"],
                    "ray/local": rate["ray"] / rate["local"],
                    "ray launch s": launch["ray"],
                    "local launch s": launch["local"],
                    "ray samples": [round(s[1]) for s in samples["ray"]],
                    "local samples": [round(s[1]) for s in samples["local"]],
                }
            )
        listeners = namespace.outside_listeners()
    finally:
        ray.shutdown()
    columns = ["servers", "lanes", "ray steps/s", "local steps/s", "ray/local", "ray launch s", "local launch s"]
    harness.print_table(
        f"One vector env over N servers of {args.lanes} CartPole lanes (median of {args.rounds} interleaved rounds, "
        f"{args.steps} steps each); Ray started in {ray_start:.1f}s",
        rows,
        columns,
    )
    print(f"listeners outside loopback during the run: {listeners or 'none'}")
    path = harness.write_json(
        "ray_scaling",
        {
            "command": "python -m benchmarks.ray_scaling " + " ".join(sys.argv[1:]),
            "ray_start_seconds": ray_start,
            "steps": args.steps,
            "rounds": args.rounds,
            "rows": rows,
        },
    )
    print(f"wrote {path}")
    return 0 if not listeners else 1


if __name__ == "__main__":
    sys.exit(main())
