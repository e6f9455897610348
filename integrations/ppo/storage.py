"""Fixed-shape rollout storage as pytrees (NamedTuples of arrays).

Autoreset convention (Gymnasium 1.x ``AutoresetMode.NEXT_STEP``): after a lane reports
``terminated`` or ``truncated`` at step ``t``, its observation returned at ``t`` is the
*final* observation of the episode. At ``t + 1`` the env ignores the action, resets the
lane and returns the first observation of the next episode with reward 0. The transition
stored at ``t + 1`` is therefore a *reset step*: it carries no learning signal and is
marked ``valid = False`` so that GAE and the loss skip it. Its stored value, ``V(final
observation)``, is exactly what a truncated episode needs for its bootstrap at ``t``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Rollout(NamedTuple):
    """One rollout of ``T`` vector steps over ``N`` lanes; every leaf is time-major ``(T, N, ...)``.

    Attributes:
        obs: Observations the actions were chosen from, ``(T, N, *obs_shape)``.
        actions: Actions sent to the env, ``(T, N, *action_shape)``.
        logprobs: Log-probabilities of ``actions`` under the behaviour policy, ``(T, N)``.
        values: Critic values ``V(obs)``, ``(T, N)``.
        rewards: Rewards returned by the step, ``(T, N)``.
        terminations: Whether the step ended the episode (no bootstrap), ``(T, N)`` bool.
        truncations: Whether the step cut the episode short (bootstrap), ``(T, N)`` bool.
        valid: False on NEXT_STEP reset steps (see module docstring), ``(T, N)`` bool.
        last_value: ``V`` of the observation after the last step, ``(N,)``.
    """

    obs: jax.Array
    actions: jax.Array
    logprobs: jax.Array
    values: jax.Array
    rewards: jax.Array
    terminations: jax.Array
    truncations: jax.Array
    valid: jax.Array
    last_value: jax.Array

    @property
    def num_steps(self) -> int:
        """Rollout length ``T``."""
        return int(self.rewards.shape[0])

    @property
    def num_envs(self) -> int:
        """Number of lanes ``N``."""
        return int(self.rewards.shape[1])


class Batch(NamedTuple):
    """Flattened training samples ``(B, ...)`` with ``B = T * N``, as consumed by the PPO loss.

    Attributes:
        obs: Observations, ``(B, *obs_shape)``.
        actions: Actions taken, ``(B, *action_shape)``.
        logprobs: Behaviour log-probabilities, ``(B,)``.
        values: Behaviour values (for value clipping), ``(B,)``.
        advantages: GAE advantages, ``(B,)``.
        returns: Value targets ``advantages + values``, ``(B,)``.
        mask: 1.0 for valid samples, 0.0 for reset steps, ``(B,)``.
    """

    obs: jax.Array
    actions: jax.Array
    logprobs: jax.Array
    values: jax.Array
    advantages: jax.Array
    returns: jax.Array
    mask: jax.Array


def reset_step_mask(dones: jax.Array, first_valid: jax.Array) -> jax.Array:
    """Return ``valid`` ``(T, N)`` from ``dones = terminations | truncations`` ``(T, N)``.

    Step ``t`` is valid unless step ``t - 1`` was done; ``first_valid`` ``(N,)`` covers ``t = 0``
    (False when the last step of the previous rollout was done).
    """
    return jnp.concatenate([first_valid[None], ~dones[:-1]], axis=0)


def flatten(rollout: Rollout, advantages: jax.Array, returns: jax.Array) -> Batch:
    """Merge the time and lane axes of a rollout and its GAE outputs into a :class:`Batch`."""

    def flat(x: jax.Array) -> jax.Array:
        return x.reshape((-1, *x.shape[2:]))

    return Batch(
        obs=flat(rollout.obs),
        actions=flat(rollout.actions),
        logprobs=flat(rollout.logprobs),
        values=flat(rollout.values),
        advantages=flat(advantages),
        returns=flat(returns),
        mask=flat(rollout.valid).astype(jnp.float32),
    )
