"""rlmesh.jax clients against real servers on loopback: values, zero copy, remote == local."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from envs import WIRE_DTYPES, DictTupleEnv, EchoEnv
from gymnasium import spaces

import rlmesh.jax as rj
from rlmesh import EnvServer, InvalidActionError
from rlmesh.client import RemoteEnvBase
from rlmesh.tensor import Tensor

# Every test here runs over ZeroMQ only and over the shared-memory fast path.
pytestmark = pytest.mark.usefixtures("data_plane")

DEMOTED = {"int64": "int32", "uint64": "uint32", "float64": "float32"}


class MegabyteEnv(gym.Env):
    """512x512 float32 observations: exactly 1 MiB per step."""

    observation_space = spaces.Box(-1.0, 1.0, (512, 512), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self._observation(0), {}

    def step(self, action: Any) -> Any:
        return self._observation(int(action) + 1), 1.0, False, False, {}

    def _observation(self, value: int) -> np.ndarray:
        obs = np.zeros((512, 512), np.float32)
        obs[0, 0], obs[-1, -1] = value * 0.25, -0.5
        return obs


def _cartpole_vector() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")


def _assert_tree_equal(remote: Any, local: Any) -> None:
    if isinstance(local, dict):
        assert set(remote) == set(local)
        for key in local:
            _assert_tree_equal(remote[key], local[key])
    elif isinstance(local, tuple | list):
        assert len(remote) == len(local)
        for remote_item, local_item in zip(remote, local, strict=True):
            _assert_tree_equal(remote_item, local_item)
    else:
        np.testing.assert_array_equal(np.asarray(remote), np.asarray(local))


def test_cartpole_remote_equals_local(serve: Callable[..., EnvServer]) -> None:
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")
    with rj.RemoteEnv(server.address) as env:
        obs, _ = env.reset(seed=123)
        expected, _ = local.reset(seed=123)
        assert isinstance(obs, jax.Array) and obs.dtype == jnp.float32
        _assert_tree_equal(obs, expected)
        env.action_space.seed(5)
        for t in range(60):
            action = env.action_space.sample() if t % 2 else jnp.int32(t % 2)
            obs, reward, terminated, truncated, _ = env.step(action)
            expected, local_reward, local_terminated, local_truncated, _ = local.step(int(action))
            _assert_tree_equal(obs, expected)
            assert (reward, terminated, truncated) == (
                local_reward,
                local_terminated,
                local_truncated,
            )
            if terminated or truncated:
                obs, _ = env.reset(seed=t)
                expected, _ = local.reset(seed=t)
                _assert_tree_equal(obs, expected)


def test_cartpole_vector_remote_equals_local_through_autoresets(
    serve: Callable[..., EnvServer],
) -> None:
    server = serve(_cartpole_vector)
    local = _cartpole_vector()
    rng = np.random.default_rng(0)
    with rj.RemoteVectorEnv(server.address) as env:
        assert env.num_envs == 4
        obs, _ = env.reset(seed=7)
        expected, _ = local.reset(seed=7)
        _assert_tree_equal(obs, expected)
        finished = 0
        for _ in range(300):
            actions = jnp.asarray(rng.integers(0, 2, 4), jnp.int32)
            obs, rewards, terminations, truncations, _ = env.step(actions)
            local_out = local.step(np.asarray(actions))
            assert isinstance(obs, jax.Array) and obs.shape == (4, 4)
            _assert_tree_equal((obs, rewards, terminations, truncations), local_out[:4])
            finished += int(np.sum(local_out[2]) + np.sum(local_out[3]))
        assert finished > 4  # several lanes went through NEXT_STEP autoresets


def test_nested_observations_and_actions(serve: Callable[..., EnvServer]) -> None:
    server = serve(DictTupleEnv)
    local = DictTupleEnv()
    with jax.enable_x64(True), rj.RemoteEnv(server.address) as env:  # float64 leaves exact
        obs, info = env.reset(seed=3)
        expected, expected_info = local.reset(seed=3)
        _assert_tree_equal(obs, expected)
        assert info == expected_info
        assert isinstance(obs["position"], jax.Array) and isinstance(obs["pair"], tuple)
        action = {"move": jnp.array([0.25, -0.5], jnp.float32), "jump": jnp.int32(1)}
        obs, reward, *_ = env.step(action)
        expected, local_reward, *_ = local.step({"move": np.array([0.25, -0.5], np.float32), "jump": 1})
        _assert_tree_equal(obs, expected)
        assert reward == local_reward


def _echo_action(x64: bool) -> dict[str, jax.Array]:
    action = {}
    for name in WIRE_DTYPES:
        values = np.arange(6).reshape(2, 3) % (2 if name == "bool" else 7)
        if x64 and np.dtype(name).kind in "iu":
            values = values.astype(name)
            values.flat[0], values.flat[-1] = np.iinfo(name).min, np.iinfo(name).max
        action[name] = jnp.asarray(values.astype(name))
    return action


@pytest.mark.parametrize("x64", [True, False])
def test_every_dtype_crosses_the_wire(serve: Callable[..., EnvServer], x64: bool) -> None:
    server = serve(EchoEnv)
    with jax.enable_x64(x64), rj.RemoteEnv(server.address, validate_actions=x64) as env:
        action = _echo_action(x64)
        for name in WIRE_DTYPES:
            assert action[name].dtype == np.dtype(name if x64 else DEMOTED.get(name, name))
        obs, _, _, _, info = env.step(action)
        for name in WIRE_DTYPES:
            assert isinstance(obs[name], jax.Array) and obs[name].dtype == action[name].dtype
            np.testing.assert_array_equal(np.asarray(obs[name]), np.asarray(action[name]))
            # Without x64 the server casts the 32-bit actions to the space's 64-bit dtypes.
            assert info["dtypes"][name] == name


_RECEIVED: list[Tensor] = []


def _remember_and_decode(tensor: Tensor) -> Any:
    _RECEIVED.append(tensor)
    return rj.asarray(tensor)


class _RecordingEnv(RemoteEnvBase[Any, Any]):
    """The JAX client, remembering the Tensors the transport received (receive buffers)."""

    bridge = dataclasses.replace(rj.JAX_BRIDGE, decode_leaf=_remember_and_decode)


def test_megabyte_observation_shares_the_receive_buffer(serve: Callable[..., EnvServer]) -> None:
    server = serve(MegabyteEnv)
    _RECEIVED.clear()
    try:
        with _RecordingEnv(server.address) as env:
            obs, _ = env.reset(seed=0)
            obs, *_ = env.step(1)
        tensor = _RECEIVED[-1]
        assert tensor.nbytes == 1 << 20 and tensor.data_ptr % 64 == 0
        pointer = obs.unsafe_buffer_pointer()
        assert pointer == tensor.data_ptr  # zero copy after the socket read
        assert tensor.data_ptr <= pointer < tensor.data_ptr + tensor.nbytes
        assert float(obs[0, 0]) == 0.5 and float(obs[-1, -1]) == -0.5
        with pytest.raises(TypeError):
            obs[0, 0] = 1.0  # immutable
    finally:
        _RECEIVED.clear()  # the receive buffers go back to the pool now, not in a later test


def test_megabyte_observation_through_the_public_client(serve: Callable[..., EnvServer]) -> None:
    server = serve(MegabyteEnv)
    with rj.RemoteEnv(server.address) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (512, 512) and obs.unsafe_buffer_pointer() % 64 == 0
        assert float(jax.jit(jnp.sum)(obs)) == pytest.approx(-0.5)


def test_invalid_actions_fail_locally_with_the_leaf_path(serve: Callable[..., EnvServer]) -> None:
    server = serve(DictTupleEnv)
    with rj.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        with pytest.raises(InvalidActionError, match=r"action\['move'\]: expected an array of shape \(2,\)"):
            env.step({"move": jnp.zeros(3), "jump": 1})
        with pytest.raises(InvalidActionError, match=r"action\['jump'\]: expected an integer in \[0, 2\)"):
            env.step({"move": jnp.zeros(2), "jump": 2})
        env.step({"move": jnp.zeros(2), "jump": 1})  # the session is still usable


def test_validate_observations(serve: Callable[..., EnvServer]) -> None:
    server = serve(_cartpole_vector)
    with rj.RemoteVectorEnv(server.address, validate_observations=True) as env:
        env.reset(seed=0)
        for _ in range(30):
            env.step(env.action_space.sample())
        with pytest.raises(InvalidActionError, match=r"expected an integer array of shape \(4,\)"):
            env.step(jnp.zeros(3, jnp.int32))


def test_remote_spaces_sample_jax_values(serve: Callable[..., EnvServer]) -> None:
    server = serve("CartPole-v1")
    with rj.RemoteEnv(server.address) as env:
        assert isinstance(env.observation_space.sample(), jax.Array)
        env.observation_space.seed(1)
        first = env.observation_space.sample()
        env.observation_space.seed(1)
        np.testing.assert_array_equal(np.asarray(first), np.asarray(env.observation_space.sample()))
        obs, _ = env.reset(seed=0)
        assert env.observation_space.contains(obs)


def test_served_from_a_separate_process(serve_process: Callable[..., Any]) -> None:
    server = serve_process("CartPole-v1", "--num-envs", "4")
    local = _cartpole_vector()
    with rj.RemoteVectorEnv(server.address) as env:
        obs, _ = env.reset(seed=11)
        expected, _ = local.reset(seed=11)
        _assert_tree_equal(obs, expected)
        for t in range(50):
            actions = jnp.full(4, t % 2, jnp.int32)
            _assert_tree_equal(env.step(actions)[:4], local.step(np.asarray(actions))[:4])
