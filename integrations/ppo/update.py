"""The PPO update: GAE, then epochs x minibatches of gradient steps as one jitted function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax.training.train_state import TrainState

from rlmesh.integrations.ppo.gae import rollout_gae
from rlmesh.integrations.ppo.loss import LossConfig, ppo_loss
from rlmesh.integrations.ppo.storage import Batch, Rollout, flatten


class UpdateConfig(NamedTuple):
    """Static settings of one PPO update.

    Attributes:
        num_epochs: Passes over the rollout per update.
        num_minibatches: Minibatches per epoch (must divide ``T * N``).
        gamma: Discount factor.
        gae_lambda: GAE lambda.
        loss: Loss coefficients.
    """

    num_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    loss: LossConfig = LossConfig()


UpdateFn = Callable[[TrainState, Rollout, jax.Array], tuple[TrainState, dict[str, jax.Array]]]


def make_update_fn(config: UpdateConfig) -> UpdateFn:
    """Return a jitted ``update(state, rollout, key) -> (state, metrics)``.

    ``state.apply_fn(params, obs)`` must return ``(policy_output, values)``. Every epoch
    reshuffles the flattened rollout with a key split from ``key``; the minibatch loop and
    the epoch loop are ``lax.scan``s, so the whole update is a single XLA program. Metrics
    are averaged over all minibatches of the update.
    """

    def minibatch_step(state: TrainState, minibatch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        def loss_fn(params: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
            return ppo_loss(params, state.apply_fn, minibatch, config.loss)

        grads, metrics = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), metrics

    def epoch(carry: tuple[TrainState, Batch], key: jax.Array) -> tuple[tuple[TrainState, Batch], dict[str, jax.Array]]:
        state, batch = carry
        size = batch.mask.shape[0]
        perm = jax.random.permutation(key, size)

        def split(x: jax.Array) -> jax.Array:
            return x[perm].reshape((config.num_minibatches, -1, *x.shape[1:]))

        state, metrics = jax.lax.scan(minibatch_step, state, jax.tree.map(split, batch))
        return (state, batch), metrics

    @jax.jit
    def update(state: TrainState, rollout: Rollout, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        size = rollout.num_steps * rollout.num_envs
        if size % config.num_minibatches:
            raise ValueError(f"num_minibatches={config.num_minibatches} must divide {size}")
        advantages, returns = rollout_gae(rollout, config.gamma, config.gae_lambda)
        batch = flatten(rollout, advantages, returns)
        keys = jax.random.split(key, config.num_epochs)
        (state, _), metrics = jax.lax.scan(epoch, (state, batch), keys)
        return state, jax.tree.map(jnp.mean, metrics)

    return update
