"""Serve CartPole, evaluate a Flax policy over 20 seeds with a progress bar, print the summary.

Run it with ``python examples/eval_flax_policy.py`` (needs ``pip install "rlmesh[flax,gymnasium]"``).

The policy is a Linen MLP whose weights are set by hand to a classic CartPole controller
(push toward the side the pole falls to, weighting angle and angular velocity), so the example
has no training step; swap in your trained ``variables`` (or ``from_nnx(module)`` /
``from_apply_fn(apply_fn, params)``) and the rest is unchanged. Pass ``--num-envs 4`` to serve
a vector env: the policy is then called once per vector step on ``(4, 4)`` observations.
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import gymnasium as gym
import jax
import jax.numpy as jnp

from rlmesh import EnvServer
from rlmesh.integrations.flax_policy import from_linen


class Policy(nn.Module):
    """Observation (4,) -> logits (2,)."""

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(2, name="head")(obs)


def controller_variables() -> dict:
    """Weights of ``logit[1] - logit[0] = angle + angular velocity``."""
    variables = Policy().init(jax.random.key(0), jnp.zeros(4))
    kernel = jnp.zeros((4, 2)).at[2:, 0].set(-0.5).at[2:, 1].set(0.5)
    return {"params": {"head": {"kernel": kernel, "bias": jnp.zeros(2)}}} | {
        k: v for k, v in variables.items() if k != "params"
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20, help="evaluate seeds 0..N-1 (default 20)")
    parser.add_argument("--num-envs", type=int, default=None, help="serve a vector env of this many lanes")
    parser.add_argument("--stochastic", action="store_true", help="sample actions instead of argmax")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args()

    if args.num_envs:
        num_envs = args.num_envs
        source = lambda: gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")
    else:
        source = "CartPole-v1"
    with EnvServer(source) as server:
        server.start()
        policy = from_linen(Policy(), controller_variables(), deterministic=not args.stochastic, seed=0, max_traces=1)
        result = policy.run(server.address, seeds=range(args.seeds), progress=not args.no_progress)

    print(result.summary())
    print(f"  episodes:     {result.num_episodes}")
    print(f"  mean reward:  {result.mean_reward:.1f} +/- {result.std_reward:.1f}")
    if result.success_rate == result.success_rate:  # NaN when the env reports no success (CartPole)
        print(f"  success rate: {result.success_rate:.0%}")
    print(f"  total steps:  {result.total_steps} in {result.wall_s:.2f}s ({result.steps_per_s:,.0f} steps/s)")
    print(f"  jit traces:   {policy.trace_counts}")


if __name__ == "__main__":
    main()
