"""PPO rollout collection through remote envs against in-process envs, in turns, in one process.

``ppo_cartpole_seeds`` times whole training runs, where compilation, server start-up and this
machine's drift in speed weigh as much as the per-step cost. This script isolates the part
where local and remote differ: collecting one rollout (``--num-steps`` vector steps of
``--num-envs`` CartPole lanes) with the example's actor-critic, the same parameters for every
mode, the modes taking turns rollout by rollout:

* ``local``: ``gymnasium.make_vec(..., vectorization_mode="sync")`` in process;
* ``embedded``: one ``rlmesh serve`` process on a unix socket (the shared-memory fast path),
  every lane in one session of a ``rlmesh.numpy.RemoteVectorEnv`` (the example's default);
* ``two-servers``: the lanes split over two server processes, stepped in parallel;
* ``double-buffer``: two sessions of half the lanes on one server, as two lane groups, one
  group's policy computed while the other steps (``DoubleBufferedCollector``);
* ``double-buffer-two-servers``: the same with each group on its own server process.

The policy runs inline on the CPU, as the example runs it
(:func:`rlmesh.integrations.ppo.cpu.run_small_policies_inline`). Target (issue 12): remote at
least as many env steps per second as ``local``.

Usage (from the repository root):
  python -m benchmarks.ppo_collect [--rounds 15] [--num-envs 8] [--num-steps 128]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np

import rlmesh.numpy
from benchmarks import harness
from rlmesh.integrations.ppo import DoubleBufferedCollector, PythonCollector, actor_critic_for
from rlmesh.integrations.ppo.cpu import run_small_policies_inline
from rlmesh.integrations.ppo.rollout import CollectorState, initial_state
from rlmesh.launch import launch_server

MODES = ("local", "embedded", "two-servers", "double-buffer", "double-buffer-two-servers")
ENV_ID = "CartPole-v1"


def _collector(mode: str, stack: contextlib.ExitStack, folder: str, lanes: int, apply_fn: Any) -> Any:
    """The collector of ``mode`` (its envs closed with ``stack``)."""
    if mode == "local":
        env = gym.make_vec(ENV_ID, num_envs=lanes, vectorization_mode="sync")
        stack.callback(env.close)
        return PythonCollector(env, apply_fn, np.asarray)
    servers = 1 if mode in ("embedded", "double-buffer") else 2
    server_lanes = lanes // 2 if mode == "double-buffer" else lanes  # two sessions of half the lanes
    launched = stack.enter_context(
        launch_server(ENV_ID, num_envs=server_lanes, servers=servers, address=f"unix://{folder}/{mode}.sock")
    )

    def client(addresses: list[str]) -> Any:  # as examples/ppo_cartpole.py connects
        return stack.enter_context(rlmesh.numpy.RemoteVectorEnv(addresses, validate_actions=False))

    if mode.startswith("double-buffer"):
        groups = launched.addresses * 2 if mode == "double-buffer" else launched.addresses
        return DoubleBufferedCollector([client([address]) for address in groups], apply_fn, np.asarray)
    return PythonCollector(client(launched.addresses), apply_fn, np.asarray)


def _first_state(collector: Any, seed: int) -> CollectorState:
    if isinstance(collector, DoubleBufferedCollector):
        observations = collector.reset(seed)
    else:
        observations = collector.env.reset(seed=seed)[0]
    return initial_state(observations, jax.random.PRNGKey(seed))


def measure(modes: list[str], rounds: int, lanes: int, num_steps: int) -> list[dict[str, Any]]:
    """Median env steps/s per mode over ``rounds`` rollouts each, the modes taking turns."""
    with contextlib.ExitStack() as stack:
        folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ppo-collect-"))
        model = actor_critic_for(gym.spaces.Discrete(2))
        apply_fn: Callable[..., Any] = lambda params, x: model.apply({"params": params}, x)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((lanes, 4), jnp.float32))["params"]
        collectors = {mode: _collector(mode, stack, folder, lanes, apply_fn) for mode in modes}
        states = {mode: _first_state(collector, 0) for mode, collector in collectors.items()}
        seconds: dict[str, list[float]] = {mode: [] for mode in modes}
        for round_ in range(rounds + 1):  # the first round compiles and warms up
            for mode, collector in collectors.items():
                start = time.perf_counter()
                rollout, states[mode] = collector.collect(params, states[mode], num_steps)
                jax.block_until_ready(rollout)
                if round_:
                    seconds[mode].append(time.perf_counter() - start)
    steps = lanes * num_steps
    rates = {mode: steps / statistics.median(values) for mode, values in seconds.items()}
    reference = rates.get("local")
    return [
        {
            "mode": mode,
            "env_steps_per_s": rate,
            "us_per_vector_step": 1e6 * statistics.median(seconds[mode]) / num_steps,
            "x_local": None if reference is None else rate / reference,
        }
        for mode, rate in rates.items()
    ]


def main() -> None:
    """Measure, print the table and write benchmarks/results/ppo_collect.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    args = parser.parse_args()
    run_small_policies_inline()  # as examples/ppo_cartpole.py
    rows = measure(args.modes, args.rounds, args.num_envs, args.num_steps)
    harness.print_table(
        f"PPO rollout collection, {args.num_envs} {ENV_ID} lanes x {args.num_steps} steps "
        f"(median of {args.rounds} rollouts per mode, in turns)",
        rows,
        ["mode", "env_steps_per_s", "us_per_vector_step", "x_local"],
    )
    remote = [row["x_local"] for row in rows if row["mode"] != "local" and row["x_local"] is not None]
    targets = {"remote_at_least_local": bool(remote) and max(remote) >= 1.0}
    print(f"\ntargets: {targets}")
    path = harness.write_json("ppo_collect", {"config": vars(args), "rows": rows, "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
