"""Stepping a remote vector env inside jax.jit / lax.scan equals the Python-driven rollout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import chex
import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlmesh.jax as rj
from rlmesh import EnvServer
from rlmesh.integrations.jit_step import EnvHandle, JitVectorEnv, StepResult, result_shapes
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    TextSpec,
)

STEPS = 200
NUM_ENVS = 4


def _cartpole_vector() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=NUM_ENVS, vectorization_mode="sync")


def _params() -> tuple[jax.Array, ...]:
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    return (
        jax.random.normal(k1, (4, 64)) * 0.5,
        jax.random.normal(k2, (64, 64)) * 0.2,
        jax.random.normal(k3, (64, 2)),
    )


@jax.jit
def policy(params: tuple[jax.Array, ...], obs: jax.Array) -> jax.Array:
    """A fixed 2x64 MLP, greedy: deterministic actions so both rollouts can be compared."""
    w1, w2, w3 = params
    hidden = jnp.tanh(jnp.tanh(obs @ w1) @ w2)
    return jnp.argmax(hidden @ w3, axis=-1).astype(jnp.int32)


def _python_rollout(env: Any, params: Any, seed: int, local: bool = False) -> dict[str, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    record: dict[str, list[Any]] = {k: [] for k in ("action", "obs", "reward", "term", "trunc")}
    for _ in range(STEPS):
        action = policy(params, obs)
        obs, reward, terminated, truncated, _ = env.step(np.asarray(action) if local else action)
        for key, value in zip(record, (action, obs, reward, terminated, truncated), strict=True):
            record[key].append(np.asarray(value))
    return {key: np.stack(values) for key, values in record.items()}


def _scan_rollout(jenv: JitVectorEnv) -> Callable[..., Any]:
    @jax.jit
    @chex.assert_max_traces(n=1)
    def rollout(params: Any, handle: EnvHandle, seed: jax.Array) -> Any:
        handle, obs = jenv.reset(handle, seed=seed)

        def body(carry: Any, _: None) -> Any:
            handle, obs = carry
            action = policy(params, obs)
            handle, step = jenv.step(handle, action)
            return (handle, step.observation), (action, step)

        (handle, _), (actions, steps) = jax.lax.scan(body, (handle, obs), None, length=STEPS)
        return handle, actions, steps

    return rollout


def test_scan_rollout_equals_python_rollout(serve: Callable[..., EnvServer]) -> None:
    chex.clear_trace_counter()
    server = serve(_cartpole_vector)
    params = _params()
    with rj.RemoteVectorEnv(server.address) as env:
        jenv = JitVectorEnv(env)
        rollout = _scan_rollout(jenv)
        for seed in (3, 4):  # twice: the second call must reuse the trace
            handle, actions, steps = rollout(params, jenv.handle(), jnp.int32(seed))
            assert isinstance(steps, StepResult)
            assert int(handle.step) == jenv.steps_served
            expected = _python_rollout(env, params, seed)
            np.testing.assert_array_equal(np.asarray(actions), expected["action"])
            np.testing.assert_array_equal(np.asarray(steps.observation), expected["obs"])
            np.testing.assert_array_equal(np.asarray(steps.reward), expected["reward"].astype(np.float32))
            np.testing.assert_array_equal(np.asarray(steps.terminated), expected["term"])
            np.testing.assert_array_equal(np.asarray(steps.truncated), expected["trunc"])
            assert expected["term"].sum() >= NUM_ENVS  # lanes went through autoresets

    local = _cartpole_vector()  # and the remote rollout is the local one
    expected_local = _python_rollout(local, params, 4, local=True)
    np.testing.assert_array_equal(np.asarray(steps.observation), expected_local["obs"])


def test_stale_or_foreign_handles_fail_loudly(serve: Callable[..., EnvServer]) -> None:
    """Refused handles raise, and the env stays usable afterwards.

    Pinned to the CPU: on an accelerator JAX keeps the failed ordered-effect token of the
    refused call, so every later ordered callback of the process fails too (seen with jax
    0.11.2 on an H200; the module docstring says so), which would fail the tests after this.
    """
    server = serve(_cartpole_vector)
    with jax.default_device(jax.devices("cpu")[0]), rj.RemoteVectorEnv(server.address) as env:
        jenv, other = JitVectorEnv(env), JitVectorEnv(env)
        step = jax.jit(jenv.step)
        handle, _ = jax.jit(jenv.reset, static_argnames="seed")(jenv.handle(), seed=0)
        handle, _ = step(handle, jnp.zeros(NUM_ENVS, jnp.int32))
        stale = EnvHandle(handle.env_id, handle.step - 1)
        with pytest.raises(Exception, match="stale EnvHandle"):
            jax.block_until_ready(step(stale, jnp.zeros(NUM_ENVS, jnp.int32)))
        with pytest.raises(Exception, match="belongs to JitVectorEnv"):
            jax.block_until_ready(jax.jit(other.step)(handle, jnp.zeros(NUM_ENVS, jnp.int32)))
        handle, result = step(handle, jnp.ones(NUM_ENVS, jnp.int32))  # still usable
        assert result.observation.shape == (NUM_ENVS, 4)


def test_x64_results_follow_the_contract(serve: Callable[..., EnvServer]) -> None:
    server = serve(_cartpole_vector)
    with jax.enable_x64(True), rj.RemoteVectorEnv(server.address) as env:
        jenv = JitVectorEnv(env)
        handle, obs = jax.jit(jenv.reset)(jenv.handle(), 0)
        handle, result = jax.jit(jenv.step)(handle, jnp.zeros(NUM_ENVS, jnp.int64))
        assert obs.dtype == jnp.float32 and result.reward.dtype == jnp.float64
        assert result.terminated.dtype == jnp.bool_


def test_single_env_endpoints_are_refused(serve: Callable[..., EnvServer]) -> None:
    server = serve("CartPole-v1")
    with rj.RemoteEnv(server.address) as env, pytest.raises(ValueError, match="vector endpoint"):
        JitVectorEnv(env)


def test_result_shapes() -> None:
    nested = DictSpec({"image": BoxSpec((2, 2), "uint8", 0, 255), "index": DiscreteSpec(3, 0)})
    shapes = result_shapes(nested, 4)
    assert shapes["image"] == jax.ShapeDtypeStruct((4, 2, 2), jnp.uint8)
    assert shapes["index"].shape == (4,)
    text = TextSpec(3, 1, "ab")
    with pytest.raises(ValueError, match="Text"):
        result_shapes(text, 4)
