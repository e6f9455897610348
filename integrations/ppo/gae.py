"""Generalised advantage estimation (GAE-lambda) with NEXT_STEP autoreset handling.

For a valid step ``t`` with value ``V_t`` and the next stored value ``V_{t+1}`` (the last
rollout step uses ``last_value``)::

    delta_t = r_t + gamma * V_{t+1} * (1 - terminated_t) - V_t
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1},   done = terminated | truncated

On truncation the bootstrap ``V_{t+1}`` is the value of the episode's *final* observation,
because under NEXT_STEP autoreset that observation is the one stored at ``t + 1`` (the
reset step). On termination there is no bootstrap. ``done_t`` stops the recursion so no
advantage leaks across episodes. Reset steps get advantage and return 0; they are masked
out of the loss anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlmesh.integrations.ppo.storage import Rollout


def gae(
    rewards: jax.Array,
    values: jax.Array,
    terminations: jax.Array,
    truncations: jax.Array,
    valid: jax.Array,
    last_value: jax.Array,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[jax.Array, jax.Array]:
    """Compute ``(advantages, returns)`` ``(T, N)`` for time-major inputs ``(T, N)``.

    Args:
        rewards: Rewards of each step.
        values: ``V(obs_t)`` of each step.
        terminations: Episode ended without bootstrap.
        truncations: Episode was cut short; bootstrap with ``V(final obs)``.
        valid: False for NEXT_STEP reset steps (their outputs are zeroed).
        last_value: ``V`` of the observation after the last step, ``(N,)``.
        gamma: Discount factor.
        gae_lambda: GAE lambda.
    """
    rewards = rewards.astype(jnp.float32)
    values = values.astype(jnp.float32)
    term = terminations.astype(jnp.float32)
    done = jnp.logical_or(terminations, truncations).astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], last_value[None].astype(jnp.float32)], axis=0)
    deltas = rewards + gamma * next_values * (1.0 - term) - values

    def backward(carry: jax.Array, xs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        delta, d = xs
        adv = delta + gamma * gae_lambda * (1.0 - d) * carry
        return adv, adv

    _, advantages = jax.lax.scan(backward, jnp.zeros_like(last_value, jnp.float32), (deltas, done), reverse=True)
    advantages = jnp.where(valid, advantages, 0.0)
    returns = jnp.where(valid, advantages + values, 0.0)
    return advantages, returns


def rollout_gae(rollout: Rollout, gamma: float = 0.99, gae_lambda: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """:func:`gae` applied to the fields of a :class:`~rlmesh.integrations.ppo.storage.Rollout`."""
    return gae(
        rollout.rewards,
        rollout.values,
        rollout.terminations,
        rollout.truncations,
        rollout.valid,
        rollout.last_value,
        gamma,
        gae_lambda,
    )
