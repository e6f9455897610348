"""The PPO optimiser: global-norm gradient clipping, then Adam with linear LR annealing."""

from __future__ import annotations

import optax


def make_optimizer(
    learning_rate: float,
    max_grad_norm: float = 0.5,
    total_gradient_steps: int | None = None,
    anneal_lr: bool = True,
    eps: float = 1e-5,
) -> optax.GradientTransformation:
    """``optax.chain(clip_by_global_norm, adam)``; the LR decays linearly to 0 when annealed.

    Args:
        learning_rate: Initial Adam learning rate.
        max_grad_norm: Global gradient-norm clip.
        total_gradient_steps: Number of optimiser updates in the whole run
            (``iterations * epochs * minibatches``); required when ``anneal_lr``.
        anneal_lr: Decay the learning rate linearly from ``learning_rate`` to 0.
        eps: Adam epsilon (1e-5 as in CleanRL and the PPO paper's implementation).
    """
    if anneal_lr:
        if not total_gradient_steps:
            raise ValueError("total_gradient_steps is required when anneal_lr is True")
        lr: float | optax.Schedule = optax.linear_schedule(learning_rate, 0.0, transition_steps=total_gradient_steps)
    else:
        lr = learning_rate
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(lr, eps=eps))
