"""A Flax (linen) actor-critic for Discrete and Box action spaces.

Separate actor and critic MLPs (no shared torso) with orthogonal initialisation, as in
CleanRL's ``ppo.py``: hidden layers use gain ``sqrt(2)``, the policy head ``0.01`` (a nearly
uniform initial policy) and the value head ``1.0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from rlmesh.integrations.ppo.distributions import PolicyOutput


def _dense(features: int, gain: float) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.initializers.orthogonal(gain),
        bias_init=nn.initializers.zeros,
    )


class MLP(nn.Module):
    """Hidden layers with an activation, then a linear head of ``out_features``."""

    hidden: Sequence[int]
    out_features: int
    head_gain: float
    activation: Callable[[jax.Array], jax.Array] = nn.tanh

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = self.activation(_dense(width, math.sqrt(2.0))(x))
        return _dense(self.out_features, self.head_gain)(x)


class ActorCritic(nn.Module):
    """Maps a batch of observations to ``(policy_output, value)``.

    Attributes:
        action_dim: Number of actions (Discrete) or flattened action size (Box).
        continuous: False for a categorical policy (logits), True for a diagonal Gaussian
            with a state-independent learned ``log_std``.
        hidden: Hidden layer widths of both the actor and the critic.
        activation: Hidden activation (tanh, as usual for PPO on control tasks).
    """

    action_dim: int
    continuous: bool = False
    hidden: Sequence[int] = (64, 64)
    activation: Callable[[jax.Array], jax.Array] = nn.tanh

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[PolicyOutput, jax.Array]:
        """Return the policy output (logits or ``(mean, log_std)``) and values ``(batch,)``."""
        x = obs.reshape(obs.shape[0], -1).astype(jnp.float32)
        value = MLP(self.hidden, 1, 1.0, self.activation, name="critic")(x)[..., 0]
        out = MLP(self.hidden, self.action_dim, 0.01, self.activation, name="actor")(x)
        if not self.continuous:
            return out, value
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return (out, jnp.broadcast_to(log_std, out.shape)), value


def actor_critic_for(space: Any, hidden: Sequence[int] = (64, 64)) -> ActorCritic:
    """Build an :class:`ActorCritic` for a Discrete (has ``.n``) or Box (has ``.shape``) space."""
    n = getattr(space, "n", None)
    if n is not None:
        return ActorCritic(action_dim=int(n), continuous=False, hidden=tuple(hidden))
    shape = tuple(getattr(space, "shape", ()) or ())
    if not shape:
        raise TypeError(f"unsupported action space for the PPO actor-critic: {space!r}")
    return ActorCritic(action_dim=int(np.prod(shape)), continuous=True, hidden=tuple(hidden))
