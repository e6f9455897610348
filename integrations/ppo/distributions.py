"""Action distributions for the actor-critic: categorical (Discrete) and diagonal Gaussian (Box).

Both are plain functions of the network's raw policy output so that they jit cleanly and
need no object state:

* Discrete: the policy output is a ``(..., n)`` array of logits.
* Box: the policy output is a ``(mean, log_std)`` pair of ``(..., action_dim)`` arrays (the
  action flattened to one axis; log-densities and entropies sum over that last axis).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

PolicyOutput = Any
"""Logits array (Discrete) or ``(mean, log_std)`` tuple (Box)."""


def _is_gaussian(pi: PolicyOutput) -> bool:
    return isinstance(pi, tuple)


def sample(pi: PolicyOutput, key: jax.Array) -> jax.Array:
    """Draw one action per batch entry from the policy output."""
    if _is_gaussian(pi):
        mean, log_std = pi
        return mean + jnp.exp(log_std) * jax.random.normal(key, mean.shape, mean.dtype)
    return jax.random.categorical(key, pi, axis=-1)


def mode(pi: PolicyOutput) -> jax.Array:
    """The deterministic (greedy) action: argmax of the logits, or the Gaussian mean."""
    if _is_gaussian(pi):
        return pi[0]
    return jnp.argmax(pi, axis=-1)


def log_prob(pi: PolicyOutput, action: jax.Array) -> jax.Array:
    """Log-probability of ``action``; Gaussian log-densities are summed over action dims."""
    if _is_gaussian(pi):
        mean, log_std = pi
        z = (action - mean) / jnp.exp(log_std)
        per_dim = -0.5 * z**2 - log_std - 0.5 * math.log(2.0 * math.pi)
        return per_dim.sum(-1)
    logp = jax.nn.log_softmax(pi, axis=-1)
    return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]


def entropy(pi: PolicyOutput) -> jax.Array:
    """Entropy per batch entry (summed over action dims for the Gaussian)."""
    if _is_gaussian(pi):
        mean, log_std = pi
        per_dim = jnp.broadcast_to(log_std + 0.5 * math.log(2.0 * math.pi * math.e), mean.shape)
        return per_dim.sum(-1)
    logp = jax.nn.log_softmax(pi, axis=-1)
    return -jnp.sum(jnp.exp(logp) * logp, axis=-1)
