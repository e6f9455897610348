"""Run CartPole in a Docker sandbox with a random policy and print the episode returns.

The environment server runs in a hardened container (no network, read-only root, all
capabilities dropped, non-root user) built from this checkout (``rlmesh_package="local"``).

    # once per machine without a registry: Docker engine + local base image rlmesh/python-base:3.11
    source .ci/sandbox_setup.sh
    python examples/sandbox_cartpole.py --episodes 5
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rlmesh.numpy import SandboxEnv


def main() -> None:
    """Play random episodes in the sandbox and print their returns."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rlmesh-package", default="local", help='"local", a wheel, or a pip spec')
    args = parser.parse_args()

    started = time.perf_counter()
    with SandboxEnv("CartPole-v1", rlmesh_package=args.rlmesh_package) as env:
        cached = "reused" if env.image_cached else "built"
        print(
            f"sandbox {env.image} ({cached}) container {env.container_id[:12]} ready in "
            f"{time.perf_counter() - started:.1f}s"
        )
        env.action_space.seed(args.seed)
        returns = []
        for episode in range(args.episodes):
            env.reset(seed=args.seed + episode)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
            print(f"episode {episode}: return {total:.0f}")
    print(f"mean return {np.mean(returns):.1f} over {len(returns)} episodes")


if __name__ == "__main__":
    main()
