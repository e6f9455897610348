"""PPO building blocks for JAX/Flax/Optax, used by ``examples/ppo_cartpole.py``.

* :mod:`.storage` - rollout and batch pytrees, NEXT_STEP reset-step mask.
* :mod:`.gae` - generalised advantage estimation with termination/truncation handling.
* :mod:`.distributions` - categorical and diagonal-Gaussian helpers.
* :mod:`.networks` - a Flax linen actor-critic for Discrete and Box action spaces.
* :mod:`.loss` - the clipped PPO loss with value and entropy terms.
* :mod:`.optim` - gradient clipping + Adam with linear learning-rate annealing.
* :mod:`.update` - epochs x minibatches as one jitted update.
* :mod:`.rollout` - jitted policy step, Python-loop, double-buffered and ``lax.scan`` collectors.

Evaluate a trained policy with ``rlmesh.jax.Model(predict_batch_fn=...).run(env, seeds=...)``
(see :func:`.rollout.make_greedy_fn` for the argmax policy).
"""

from rlmesh.errors import missing_extra

try:
    import chex  # noqa: F401
    import flax  # noqa: F401
    import jax  # noqa: F401
    import optax  # noqa: F401
except ImportError as _error:
    raise missing_extra("flax", _error.name or "jax, flax, optax and chex") from _error

from rlmesh.integrations.ppo.gae import gae, rollout_gae
from rlmesh.integrations.ppo.loss import LossConfig, masked_mean, ppo_loss, ppo_loss_terms
from rlmesh.integrations.ppo.networks import ActorCritic, actor_critic_for
from rlmesh.integrations.ppo.optim import make_optimizer
from rlmesh.integrations.ppo.rollout import (
    CollectorState,
    DoubleBufferedCollector,
    PythonCollector,
    episode_returns,
    initial_state,
    make_act_fn,
    make_greedy_fn,
    make_scan_collector,
    make_value_fn,
    policy_step,
)
from rlmesh.integrations.ppo.storage import Batch, Rollout, flatten, reset_step_mask
from rlmesh.integrations.ppo.update import UpdateConfig, make_update_fn

__all__ = [
    "ActorCritic",
    "Batch",
    "CollectorState",
    "DoubleBufferedCollector",
    "LossConfig",
    "PythonCollector",
    "Rollout",
    "UpdateConfig",
    "actor_critic_for",
    "episode_returns",
    "flatten",
    "gae",
    "initial_state",
    "make_act_fn",
    "make_greedy_fn",
    "make_optimizer",
    "make_scan_collector",
    "make_update_fn",
    "make_value_fn",
    "masked_mean",
    "policy_step",
    "ppo_loss",
    "ppo_loss_terms",
    "reset_step_mask",
    "rollout_gae",
]
