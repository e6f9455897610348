"""The double-buffered collector records, per lane group, what the plain collector records."""

from __future__ import annotations

from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlmesh.jax as rj
from rlmesh.integrations.ppo import ActorCritic, DoubleBufferedCollector, PythonCollector, initial_state


def _cartpoles(n: int) -> Any:
    return lambda: gymnasium.make_vec("CartPole-v1", num_envs=n, vectorization_mode="sync")


@pytest.mark.slow
def test_each_group_matches_a_python_collector_with_the_group_key(serve) -> None:
    sizes, steps, seed = (3, 2), 80, 11
    addresses = [serve(_cartpoles(n)).address for n in sizes]
    model = ActorCritic(action_dim=2)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"]
    key = jax.random.PRNGKey(5)

    with rj.RemoteVectorEnv(addresses[0]) as env_a, rj.RemoteVectorEnv(addresses[1]) as env_b:
        collector = DoubleBufferedCollector([env_a, env_b], apply_fn)
        obs = collector.reset(seed)
        rollout, state = collector.collect(params, initial_state(obs, key), steps)
        rollout2, _ = collector.collect(params, state, 4)  # the next rollout continues from the state

    assert rollout.obs.shape == (steps, 5, 4) and rollout.last_value.shape == (5,)
    assert np.asarray(rollout.terminations | rollout.truncations).any(), "the run must cross autoresets"
    np.testing.assert_array_equal(rollout2.obs[0], state.obs)
    _, key_a, key_b = jax.random.split(key, 3)
    start = 0
    for n, group_key, group_seed in ((3, key_a, seed), (2, key_b, seed + 3)):
        local = _cartpoles(n)()
        local_obs, _ = local.reset(seed=group_seed)
        reference, ref_state = PythonCollector(local, apply_fn).collect(
            params, initial_state(local_obs, group_key), steps
        )
        local.close()
        lanes = slice(start, start + n)
        for name in ("actions", "terminations", "truncations", "valid", "rewards"):
            np.testing.assert_array_equal(getattr(rollout, name)[:, lanes], getattr(reference, name), err_msg=name)
        for name in ("obs", "logprobs", "values"):
            np.testing.assert_allclose(getattr(rollout, name)[:, lanes], getattr(reference, name), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rollout.last_value[lanes], reference.last_value, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(state.first_valid[lanes], ref_state.first_valid)
        start += n


def test_two_groups_are_required() -> None:
    with pytest.raises(ValueError, match="takes two lane groups"):
        DoubleBufferedCollector([object()], lambda p, x: (x, x))
