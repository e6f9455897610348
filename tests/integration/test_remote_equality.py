"""A remote env returns exactly what the local env returns, step by step, for the same seeds."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from envs import DictTupleEnv, EchoEnv, ImageEnv, make_image_env

import rlmesh
import rlmesh.numpy as rn

# Every test here runs over ZeroMQ only and over the shared-memory fast path.
pytestmark = pytest.mark.usefixtures("data_plane")


def assert_tree_equal(remote: Any, local: Any, where: str = "value") -> None:
    if isinstance(local, dict):
        assert isinstance(remote, dict) and set(remote) == set(local), f"{where}: keys {set(remote)} != {set(local)}"
        for key in local:
            assert_tree_equal(remote[key], local[key], f"{where}[{key!r}]")
    elif isinstance(local, tuple | list):
        assert type(remote) is type(local) and len(remote) == len(local), f"{where}: {remote!r} != {local!r}"
        for i, (r, item) in enumerate(zip(remote, local, strict=True)):
            assert_tree_equal(r, item, f"{where}[{i}]")
    elif isinstance(local, np.ndarray) and local.ndim:
        assert isinstance(remote, np.ndarray), f"{where}: {type(remote)}"
        assert remote.dtype == local.dtype and remote.shape == local.shape, where
        np.testing.assert_array_equal(remote, local, err_msg=where)
    else:
        assert remote == local, f"{where}: {remote!r} != {local!r}"


def run_both(remote: Any, local: Any, actions: list[Any], seeds: list[int]) -> int:
    """Drive both envs with the same actions, resetting with the next seed at episode end."""
    seeds = list(seeds)
    seed = seeds.pop(0)
    assert_tree_equal(remote.reset(seed=seed), local.reset(seed=seed), "reset")
    episodes = 0
    for t, action in enumerate(actions):
        r, loc = remote.step(action), local.step(action)
        assert_tree_equal(list(r), list(loc), f"step {t}")
        if loc[2] or loc[3]:
            episodes += 1
            seed = seeds.pop(0) if seeds else None
            assert_tree_equal(remote.reset(seed=seed), local.reset(seed=seed), f"reset after step {t}")
    return episodes


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_cartpole_matches_local(serve, unix_address, transport) -> None:
    server = serve("CartPole-v1", unix_address if transport == "unix" else None)
    rng = np.random.default_rng(0)
    actions = [int(a) for a in rng.integers(0, 2, 400)]
    with rn.RemoteEnv(server.address) as remote:
        local = gym.make("CartPole-v1")
        assert remote.env_contract.id == "CartPole-v1"
        assert run_both(remote, local, actions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]) >= 3
        local.close()


def test_pendulum_box_actions_match_local(serve) -> None:
    server = serve("Pendulum-v1")
    rng = np.random.default_rng(1)
    actions = [rng.uniform(-2, 2, (1,)).astype(np.float32) for _ in range(250)]
    with rn.RemoteEnv(server.address) as remote:
        local = gym.make("Pendulum-v1")
        assert remote.action_space.shape == (1,)
        assert run_both(remote, local, actions, [5]) == 1  # TimeLimit truncates at 200
        local.close()


def test_dict_and_tuple_observations_match_local(serve) -> None:
    server = serve(DictTupleEnv)
    rng = np.random.default_rng(2)
    actions = [{"move": rng.uniform(-1, 1, 2).astype(np.float32), "jump": int(rng.integers(2))} for _ in range(45)]
    with rn.RemoteEnv(server.address) as remote:
        assert run_both(remote, DictTupleEnv(), actions, [3, 4, 5]) == 2
        obs, _ = remote.reset(seed=0)
        assert isinstance(obs["pair"], tuple) and remote.observation_space.contains(obs)


def test_image_env_and_render_frames(serve) -> None:
    server = serve(lambda: make_image_env("rgb_array"))
    with rn.RemoteEnv(server.address) as remote:
        local = ImageEnv("rgb_array")
        assert run_both(remote, local, [t % 4 for t in range(60)], [0, 1]) == 1
        frame = remote.render()
        assert isinstance(frame, np.ndarray) and frame.shape == (32, 48, 3) and frame.dtype == np.uint8
        np.testing.assert_array_equal(frame, local.render())
        assert remote.render_mode == "rgb_array" and remote.metadata["render_fps"] == 30


def test_every_dtype_round_trips_through_a_server(serve) -> None:
    server = serve(EchoEnv)
    with rn.RemoteEnv(server.address) as remote:
        remote.reset(seed=0)
        space = EchoEnv().action_space
        space.seed(7)
        action = space.sample()
        obs, _, _, _, info = remote.step(action)
        for name, array in action.items():
            assert obs[name].dtype == array.dtype, name
            np.testing.assert_array_equal(obs[name], array)
            assert info["dtypes"][name] == name


def test_plain_backend_returns_tensors(serve) -> None:
    server = serve("CartPole-v1")
    with rlmesh.RemoteEnv(server.address) as remote:
        obs, info = remote.reset(seed=0)
        assert isinstance(obs, rlmesh.Tensor) and obs.shape == (4,) and obs.dtype == "float32"
        obs, reward, terminated, truncated, info = remote.step(remote.action_space.sample())
        assert isinstance(obs, rlmesh.Tensor) and isinstance(reward, float) and isinstance(terminated, bool)


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_vector_cartpole_matches_sync_vector_env_across_autoresets(serve, unix_address, transport) -> None:
    make = lambda: gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    server = serve(make, unix_address if transport == "unix" else None)
    local = make()
    rng = np.random.default_rng(3)
    with rn.RemoteVectorEnv(server.address) as remote:
        assert remote.num_envs == 4
        assert remote.single_action_space.spec.kind == "discrete"
        assert remote.action_space.shape == (4,)
        assert_tree_equal(remote.reset(seed=[10, 11, 12, 13]), local.reset(seed=[10, 11, 12, 13]), "reset")
        finished = 0
        for t in range(300):
            actions = rng.integers(0, 2, 4)
            r, loc = remote.step(actions), local.step(actions)
            assert_tree_equal(list(r), list(loc), f"step {t}")
            finished += int(np.sum(loc[2] | loc[3]))
        assert finished >= 8, "the run must cross several autoresets"
        # A list of per-lane actions is accepted too.
        r, loc = remote.step([0, 1, 0, 1]), local.step(np.array([0, 1, 0, 1]))
        assert_tree_equal(list(r), list(loc), "list actions")
    local.close()


def test_vector_reset_with_one_seed_matches(serve) -> None:
    make = lambda: gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    server = serve(make)
    local = make()
    with rn.RemoteVectorEnv(server.address) as remote:
        assert_tree_equal(remote.reset(seed=42), local.reset(seed=42), "reset")
        with pytest.raises(ValueError, match="got 2 seeds for 3 lanes"):
            remote.reset(seed=[1, 2])
    local.close()


def test_action_space_samples_are_accepted(serve) -> None:
    server = serve(DictTupleEnv)
    with rn.RemoteEnv(server.address) as remote:
        remote.reset(seed=0)
        remote.action_space.seed(0)
        for _ in range(5):
            remote.step(remote.action_space.sample())
