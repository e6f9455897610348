"""Flax policies (Linen, NNX, bare apply_fn) as rlmesh models, run against real servers."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

jax = pytest.importorskip("jax")
chex = pytest.importorskip("chex")
nn = pytest.importorskip("flax.linen")
nnx = pytest.importorskip("flax.nnx")
import jax.numpy as jnp  # noqa: E402
from conftest import REPO_ROOT  # noqa: E402

import rlmesh.numpy as rn  # noqa: E402
from rlmesh.integrations.flax_policy import FlaxPolicy, from_apply_fn, from_linen, from_nnx  # noqa: E402


class LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        return nn.Dense(2)(nn.tanh(nn.Dense(16)(obs)))


class NnxMLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(4, 16, rngs=rngs)
        self.out = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.hidden(obs)))


def controller_logits(params: Any, obs: jax.Array) -> jax.Array:
    score = params["gain"] * (obs[2] + obs[3])
    return jnp.stack([-score, score])


def hand_loop(client: Any, act: Any, seeds: list[int]) -> list[tuple[float, int]]:
    out = []
    for seed in seeds:
        obs, _ = client.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = client.step(int(act(obs)))
            total += reward
            steps += 1
            done = terminated or truncated
        out.append((total, steps))
    return out


def pairs(result: Any) -> list[tuple[float, int]]:
    return [(e.reward, e.steps) for e in result.episodes]


@pytest.fixture
def cartpole(serve) -> Any:
    return serve("CartPole-v1")


@pytest.fixture
def cartpole_vector(serve) -> Any:
    return serve(lambda: gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync"))


def test_linen_policy_matches_argmax_and_is_traced_once(cartpole, cartpole_vector) -> None:
    module = LinenMLP()
    variables = module.init(jax.random.key(0), jnp.zeros(4))
    policy = from_linen(module, variables, max_traces=1)
    seeds = [0, 1, 2]
    with rn.RemoteEnv(cartpole.address) as client:
        expected = hand_loop(client, lambda obs: jnp.argmax(module.apply(variables, obs)), seeds)
    assert pairs(policy.run(cartpole.address, seeds=seeds)) == expected
    assert pairs(policy.run(cartpole_vector.address, seeds=seeds)) == expected
    assert policy.trace_counts == {"predict": 1, "predict_batch": 1}  # not once per step

    # New parameters of the same shapes: no recompilation (max_traces=1 would raise).
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, variables)
    policy.update_params(doubled)
    with rn.RemoteEnv(cartpole.address) as client:
        expected = hand_loop(client, lambda obs: jnp.argmax(module.apply(doubled, obs)), seeds)
    assert pairs(policy.run(cartpole.address, seeds=seeds)) == expected
    assert policy.trace_count == 2


def test_nnx_policy_runs_and_takes_updated_modules(cartpole, cartpole_vector) -> None:
    module = NnxMLP(nnx.Rngs(0))
    policy = from_nnx(module, max_traces=1)
    seeds = [3, 4]
    with rn.RemoteEnv(cartpole.address) as client:
        expected = hand_loop(client, lambda obs: jnp.argmax(module(jnp.asarray(obs))), seeds)
    assert pairs(policy.run(cartpole_vector.address, seeds=seeds)) == expected
    module.out.kernel[...] = -module.out.kernel[...]  # "training" step: flip the head
    policy.update_params(module)
    with rn.RemoteEnv(cartpole.address) as client:
        flipped = hand_loop(client, lambda obs: jnp.argmax(module(jnp.asarray(obs))), seeds)
    assert pairs(policy.run(cartpole_vector.address, seeds=seeds)) == flipped
    assert policy.trace_counts == {"predict": 0, "predict_batch": 1}


def test_apply_fn_policy_with_and_without_rng(cartpole) -> None:
    policy = from_apply_fn(controller_logits, {"gain": jnp.float32(1.0)}, max_traces=1)
    result = policy.run(cartpole.address, seeds=[0, 1])
    assert result.mean_reward > 200  # the controller balances the pole
    keys: list[Any] = []

    def noisy(params: Any, obs: jax.Array, rng: jax.Array) -> jax.Array:
        keys.append(rng)
        return controller_logits(params, obs) + 0.0 * jax.random.normal(rng, (2,))

    with_rng = from_apply_fn(noisy, {"gain": jnp.float32(1.0)})
    assert pairs(with_rng.run(cartpole.address, seeds=[0, 1])) == pairs(result)
    assert len(keys) == 1 and with_rng.trace_count == 1


def test_chex_max_traces_catches_a_recompiling_update(cartpole) -> None:
    policy = from_apply_fn(lambda p, obs: obs[:2] * p, jnp.ones(2), max_traces=1)
    policy.run(cartpole.address, seeds=[0])
    policy.update_params(jnp.ones((1, 2)))  # another shape: a re-trace
    with pytest.raises(AssertionError, match="traced > 1 times"):
        policy.run(cartpole.address, seeds=[0])


def test_stochastic_discrete_actions_thread_the_key(cartpole) -> None:
    params = {"gain": jnp.float32(0.1)}

    def evaluate(seed: int) -> list[tuple[float, int]]:
        policy = from_apply_fn(controller_logits, params, deterministic=False, seed=seed)
        return pairs(policy.run(cartpole.address, seeds=[0, 1, 2]))

    assert evaluate(0) == evaluate(0)
    assert evaluate(0) != evaluate(1)
    deterministic = pairs(from_apply_fn(controller_logits, params).run(cartpole.address, seeds=[0, 1, 2]))
    assert evaluate(0) != deterministic


def test_box_actions_mean_and_sampled(serve) -> None:
    server = serve("Pendulum-v1")
    seen: list[Any] = []

    def mean_only(params: Any, obs: jax.Array) -> jax.Array:
        return params * obs[:1]

    deterministic = from_apply_fn(mean_only, jnp.float32(10.0))
    with rn.RemoteEnv(server.address) as client:
        obs, _ = client.reset(seed=0)
        expected = np.clip(10.0 * obs[:1], -2.0, 2.0)
        deterministic.run(client, seeds=[0], max_episode_steps=1)
        action = np.asarray(deterministic.predict(jnp.asarray(obs)))
    np.testing.assert_allclose(action, expected, rtol=1e-6)
    assert action.dtype == np.float32 and action.shape == (1,)

    with pytest.raises(ValueError, match="log standard deviation"):
        from_apply_fn(mean_only, jnp.float32(1.0), deterministic=False).run(server.address, max_episode_steps=2)

    def with_log_std(params: Any, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        seen.append(obs.shape)
        return params * obs[:1], jnp.full((1,), -1.0)

    sampled = from_apply_fn(with_log_std, jnp.float32(1.0), deterministic=False, seed=3)
    first = sampled.run(server.address, seeds=[0], max_episode_steps=50)
    again = from_apply_fn(with_log_std, jnp.float32(1.0), deterministic=False, seed=3).run(
        server.address, seeds=[0], max_episode_steps=50
    )
    assert first.rewards == again.rewards and first.episodes[0].steps == 50
    fixed = from_apply_fn(mean_only, jnp.float32(1.0), deterministic=False, log_std=-2.0)
    assert fixed.run(server.address, seeds=[0], max_episode_steps=5).num_episodes == 1


def test_observations_are_validated_against_the_space_once_per_trace(cartpole) -> None:
    with rn.RemoteEnv(cartpole.address) as client:
        spec = client.env_contract
    policy = from_apply_fn(controller_logits, {"gain": 1.0}, spec=spec)
    assert int(policy.predict(jnp.zeros(4, jnp.float32))) in (0, 1)
    with pytest.raises(ValueError, match=r"observation: expected an array of shape \(4,\).*found .* shape \(3,\)"):
        policy.predict(jnp.zeros(3, jnp.float32))
    with pytest.raises(ValueError, match=r"float or integer values.*found bool"):
        policy.predict(jnp.zeros(4, jnp.bool_))


def test_unsupported_action_spaces_ask_for_select_fn(serve) -> None:
    multi = serve(_multi_discrete_env)
    with pytest.raises(ValueError, match="select_fn"):
        from_apply_fn(lambda p, obs: obs, None).run(multi.address)
    custom = from_apply_fn(lambda p, obs: obs, None, select_fn=lambda out, key: jnp.array([1, 0]))
    assert custom.run(multi.address, max_episode_steps=3).total_steps == 3
    assert isinstance(custom, FlaxPolicy)


def _multi_discrete_env() -> gym.Env:
    class MultiDiscreteEnv(gym.Env):
        observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        action_space = gym.spaces.MultiDiscrete([2, 3])

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> Any:
            super().reset(seed=seed)
            return np.zeros(2, np.float32), {}

        def step(self, action: Any) -> Any:
            return np.zeros(2, np.float32), float(action.sum()), False, False, {}

    return MultiDiscreteEnv()


def test_example_script_runs() -> None:
    script = REPO_ROOT / "examples" / "eval_flax_policy.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--seeds", "2", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert "2 episodes" in completed.stdout and "jit traces" in completed.stdout
