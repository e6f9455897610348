"""The clipped PPO objective with value and entropy terms, masked to valid samples.

``loss = policy_loss + vf_coef * value_loss - ent_coef * entropy`` where (means taken over
samples with ``mask == 1``)::

    ratio        = exp(logp_new - logp_old)
    policy_loss  = mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))
    value_loss   = 0.5 * mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))
                   (or 0.5 * mean((V - R)^2) without value clipping)
    entropy      = mean(H(pi))

Advantages are normalised over the valid samples of the minibatch when ``norm_adv``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from rlmesh.integrations.ppo import distributions
from rlmesh.integrations.ppo.storage import Batch


class LossConfig(NamedTuple):
    """Coefficients of the PPO loss (CleanRL names).

    Attributes:
        clip_coef: Surrogate clipping epsilon.
        ent_coef: Weight of the entropy bonus.
        vf_coef: Weight of the value loss.
        clip_vloss: Clip the value loss around the behaviour values.
        norm_adv: Normalise advantages per minibatch.
    """

    clip_coef: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    clip_vloss: bool = True
    norm_adv: bool = True


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``x`` over entries where ``mask`` is 1 (0 when none are)."""
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def normalize_advantages(adv: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Standardise advantages over the masked entries (unbiased std, as ``torch.std``)."""
    n = jnp.maximum(jnp.sum(mask), 1.0)
    mean = jnp.sum(adv * mask) / n
    var = jnp.sum(((adv - mean) * mask) ** 2) / jnp.maximum(n - 1.0, 1.0)
    return (adv - mean) / (jnp.sqrt(var) + eps)


def ppo_loss_terms(
    new_logprob: jax.Array,
    new_value: jax.Array,
    entropy: jax.Array,
    batch: Batch,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Combine per-sample policy outputs into the PPO loss; returns ``(loss, metrics)``."""
    mask = batch.mask
    adv = batch.advantages
    if config.norm_adv:
        adv = normalize_advantages(adv, mask)
    log_ratio = new_logprob - batch.logprobs
    ratio = jnp.exp(log_ratio)
    pg1 = -adv * ratio
    pg2 = -adv * jnp.clip(ratio, 1.0 - config.clip_coef, 1.0 + config.clip_coef)
    policy_loss = masked_mean(jnp.maximum(pg1, pg2), mask)

    v_unclipped = (new_value - batch.returns) ** 2
    if config.clip_vloss:
        v_clipped = batch.values + jnp.clip(new_value - batch.values, -config.clip_coef, config.clip_coef)
        v_loss = 0.5 * masked_mean(jnp.maximum(v_unclipped, (v_clipped - batch.returns) ** 2), mask)
    else:
        v_loss = 0.5 * masked_mean(v_unclipped, mask)

    ent = masked_mean(entropy, mask)
    loss = policy_loss + config.vf_coef * v_loss - config.ent_coef * ent
    metrics = {
        "loss": loss,
        "policy_loss": policy_loss,
        "value_loss": v_loss,
        "entropy": ent,
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask),
        "clipfrac": masked_mean((jnp.abs(ratio - 1.0) > config.clip_coef).astype(jnp.float32), mask),
    }
    return loss, metrics


def ppo_loss(
    params: Any,
    apply_fn: Callable[..., Any],
    batch: Batch,
    config: LossConfig,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Evaluate the actor-critic on ``batch.obs`` and return the PPO ``(loss, metrics)``.

    ``apply_fn(params, obs)`` must return ``(policy_output, values)`` as
    :class:`~rlmesh.integrations.ppo.networks.ActorCritic` does.
    """
    pi, value = apply_fn(params, batch.obs)
    new_logprob = distributions.log_prob(pi, batch.actions)
    return ppo_loss_terms(new_logprob, value, distributions.entropy(pi), batch, config)
