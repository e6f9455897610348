"""One vector env over several endpoints equals an in-process SyncVectorEnv, step by step."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from envs import make_image_env
from gymnasium import spaces
from test_remote_equality import assert_tree_equal

import rlmesh
import rlmesh.jax as rj
import rlmesh.numpy as rn

# Every test here runs over ZeroMQ only and over the shared-memory fast path.
pytestmark = pytest.mark.usefixtures("data_plane")


class InfoEnv(gym.Env):
    """Dict observations and infos whose keys come and go (masks), nested dicts included."""

    observation_space = spaces.Dict({"pos": spaces.Box(-10.0, 10.0, (2,), np.float32), "count": spaces.Discrete(100)})
    action_space = spaces.Discrete(3)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self.t = 0
        return self._obs(), {"start": float(self.pos[0])}

    def step(self, action: Any) -> Any:
        self.t += 1
        self.pos = self.pos + np.float32(0.6) * (int(action) - 1) + self.np_random.normal(0, 0.1, 2).astype(np.float32)
        info: dict[str, Any] = {"t": self.t, "extra": {"even": self.t % 2 == 0}}
        if action == 2:
            info["bonus"] = np.array([1.5, self.t], np.float64)
        terminated = bool(abs(self.pos[0]) > 2.5)
        return self._obs(), float(self.pos[1]), terminated, self.t >= 9, info

    def _obs(self) -> dict[str, Any]:
        return {"pos": self.pos.copy(), "count": self.t}


def _vector(n: int) -> Any:
    return lambda: gym.vector.SyncVectorEnv([InfoEnv] * n)


def _cartpoles(n: int) -> Any:
    return lambda: gym.make_vec("CartPole-v1", n, vectorization_mode="sync")


def _endpoints(serve, layout: list[int | None]) -> list[str]:
    """Serve one endpoint per entry: n lanes of a vector env, or None for a single env."""
    return [serve(InfoEnv if n is None else _vector(n)).address for n in layout]


@pytest.mark.parametrize("layout", [[2, None], [None, 3, 2], [2, 2]], ids=["vector+single", "3-mixed", "2-vector"])
def test_joined_env_equals_sync_vector_env_across_autoresets(serve, layout) -> None:
    addresses = _endpoints(serve, layout)
    num_envs = sum(1 if n is None else n for n in layout)
    local = gym.vector.SyncVectorEnv([InfoEnv] * num_envs)
    rng = np.random.default_rng(1)
    with rn.RemoteVectorEnv(addresses) as remote:
        assert remote.num_envs == num_envs and remote.addresses == tuple(addresses)
        assert remote.single_action_space.n == 3
        assert_tree_equal(remote.reset(seed=7), local.reset(seed=7), "reset")
        finished = 0
        for t in range(60):
            actions = rng.integers(0, 3, num_envs)
            expected = local.step(actions)
            assert_tree_equal(list(remote.step(actions)), list(expected), f"step {t}")
            finished += int(np.sum(expected[2] | expected[3]))
        assert finished >= 2 * num_envs, "the run must cross autoresets on every lane"
        seeds = list(range(100, 100 + num_envs))
        assert_tree_equal(remote.reset(seed=seeds), local.reset(seed=seeds), "reset with a seed per lane")
        actions = list(rng.integers(0, 3, num_envs))
        assert_tree_equal(list(remote.step(actions)), list(local.step(np.array(actions))), "list of actions")
    local.close()


def test_joined_env_async_and_jax_backend(serve) -> None:
    addresses = [serve(_cartpoles(2)).address, serve("CartPole-v1").address]
    local = gym.make_vec("CartPole-v1", 3, vectorization_mode="sync")
    rng = np.random.default_rng(2)
    with rj.RemoteVectorEnv(addresses) as remote:
        obs, _ = remote.reset(seed=3)
        np.testing.assert_array_equal(np.asarray(obs), local.reset(seed=3)[0])
        for t in range(120):
            actions = rng.integers(0, 2, 3)
            remote.step_async(actions)
            obs, rewards, terminations, truncations, _ = remote.step_wait()
            expected = local.step(actions)
            for got, want in zip((obs, rewards, terminations, truncations), expected, strict=False):
                assert type(got).__module__.startswith("jax")
                np.testing.assert_array_equal(np.asarray(got), want, err_msg=f"step {t}")
    local.close()


def test_plain_backend_joined_env_returns_tensors(serve) -> None:
    make = lambda: make_image_env("rgb_array")
    addresses = [serve(make).address, serve(lambda: gym.vector.SyncVectorEnv([make, make])).address]
    with rlmesh.RemoteVectorEnv(addresses) as remote:
        obs, _ = remote.reset(seed=0)
        assert isinstance(obs, rlmesh.Tensor) and obs.shape == (3, 84, 84, 4)
        obs, rewards, terminations, _, _ = remote.step(remote.action_space.sample())
        assert isinstance(rewards, rlmesh.Tensor) and rewards.dtype == "float64" and terminations.dtype == "bool"
        frames = remote.render()
        assert len(frames) == 3 and all(isinstance(f, rlmesh.Tensor) and f.shape == (32, 48, 3) for f in frames)


def test_differing_spaces_name_the_endpoint(serve) -> None:
    # The first endpoint serves one env object: one client at a time, so it must be free again.
    first, other = serve(gym.make("CartPole-v1")).address, serve("MountainCar-v0").address
    with pytest.raises(ValueError, match=rf"endpoint {other} serves a different observation space than {first}"):
        rn.RemoteVectorEnv([first, other])
    with rn.RemoteVectorEnv([first]) as remote:  # the failed join left the first endpoint free
        assert remote.num_envs == 1 and remote.reset(seed=0)[0].shape == (1, 4)


def test_bad_address_lists_are_refused(serve) -> None:
    address = serve("CartPole-v1").address
    with pytest.raises(ValueError, match="at least one endpoint"):
        rn.RemoteVectorEnv([])
    with pytest.raises(TypeError, match="RemoteEnv connects to one endpoint, got a list of 2"):
        rn.RemoteEnv([address, address])
    with pytest.raises(ValueError, match="host, port and path"):
        rn.RemoteVectorEnv([address], port=5555)


def test_bad_seed_reaches_every_endpoint_and_they_keep_serving(serve) -> None:
    addresses = [serve("CartPole-v1").address, serve(_cartpoles(2)).address]
    with rn.RemoteVectorEnv(addresses) as remote:
        with pytest.raises(rlmesh.BadRequestError, match="seed"):
            remote.reset(seed=-5)
        assert remote.reset(seed=0)[0].shape == (3, 4)
        assert remote.step(np.zeros(3, np.int64))[0].shape == (3, 4)


def test_a_dying_endpoint_raises_naming_it(serve_process) -> None:
    survivor = serve_process("CartPole-v1", "--num-envs", "2")
    victim = serve_process("CartPole-v1", "--num-envs", "2")
    with rn.RemoteVectorEnv([survivor.address, victim.address]) as remote:
        remote.reset(seed=0)
        remote.step(np.zeros(4, np.int64))
        victim.kill()
        with pytest.raises(rlmesh.EndpointConnectionError, match=victim.address):
            for _ in range(50):  # the first step after the kill may still find the socket open
                remote.step(np.zeros(4, np.int64))
    with rn.RemoteVectorEnv(survivor.address) as alone:
        assert alone.reset(seed=0)[0].shape == (2, 4)
