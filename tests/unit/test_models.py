"""ModelBase without servers: construction, batching rules, conversions, results, local envs."""

from __future__ import annotations

import math
import sys
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh
import rlmesh.numpy
from rlmesh import Model
from rlmesh.bridges import NUMPY_BRIDGE, TENSOR_BRIDGE, converter
from rlmesh.errors import InvalidActionError
from rlmesh.models import DEFAULT_MAX_EPISODE_STEPS, RANDOM_SAMPLE, EpisodeResult, RunResult, evaluate, run
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    EnvContract,
    SpaceSpec,
)
from rlmesh.tensor import Tensor

DISCRETE = DiscreteSpec(2, 0)
BOX4 = BoxSpec((4,), "float32", -np.inf, np.inf)
BOX2 = BoxSpec((2,), "float32", -1.0, 1.0)
DICT = DictSpec({"move": BOX2, "jump": DISCRETE})


NumpyModel = rlmesh.numpy.Model


def cartpole_policy(obs: np.ndarray) -> int:
    return int(obs[2] + obs[3] > 0)


def contract(obs: SpaceSpec = BOX4, act: SpaceSpec = DISCRETE, num_envs: int | None = None) -> EnvContract:
    return EnvContract(observation_space=obs, action_space=act, id="Test-v0", num_envs=num_envs)


# -- construction ----------------------------------------------------------------------------


def test_model_needs_a_way_to_predict() -> None:
    with pytest.raises(TypeError, match="predict_fn"):
        NumpyModel()
    with pytest.raises(TypeError, match="predict_fn must be callable"):
        NumpyModel(3)  # type: ignore[arg-type]


def test_subclass_overriding_predict_needs_no_function() -> None:
    class Sub(NumpyModel):
        def predict(self, obs: Any) -> Any:
            return 1

    assert Sub().predict(np.zeros(4)) == 1


def test_device_and_vmap_are_checked_for_the_backend() -> None:
    with pytest.raises(ValueError, match="keeps observations on the host"):
        NumpyModel(cartpole_policy, device="gpu")
    assert NumpyModel(cartpole_policy, device="cpu").device is None
    with pytest.raises(ValueError, match=r"vmap=True.*rlmesh\.jax\.Model"):
        NumpyModel(cartpole_policy, vmap=True)


def test_spec_accepts_a_contract_or_rejects_other_values() -> None:
    assert NumpyModel(cartpole_policy, spec=contract()).spec == contract()
    with pytest.raises(TypeError, match="EnvContract"):
        NumpyModel(cartpole_policy, spec="CartPole-v1")


def test_declared_spec_must_match_the_env() -> None:
    from rlmesh.spaces import spec_from_gymnasium_space

    observation = spec_from_gymnasium_space(gym.make("CartPole-v1").observation_space)
    model = NumpyModel(cartpole_policy, spec=contract(obs=observation, act=BOX2))
    with pytest.raises(ValueError, match=r"action space Box.*CartPole-v1 has Discrete\(2\)"):
        model.run(gym.make("CartPole-v1"))


def test_random_sample_is_a_singleton_sentinel() -> None:
    assert repr(RANDOM_SAMPLE) == "RANDOM_SAMPLE"
    assert type(RANDOM_SAMPLE)() is RANDOM_SAMPLE


def test_run_refuses_non_models() -> None:
    with pytest.raises(TypeError, match="RANDOM_SAMPLE"):
        run(cartpole_policy, gym.make("CartPole-v1"))


# -- batching rules --------------------------------------------------------------------------


def batch_model(returned: Any, num_envs: int, act: SpaceSpec = DISCRETE) -> Any:
    model = NumpyModel(predict_batch_fn=lambda obs: returned)
    model.prepare(contract(act=act, num_envs=num_envs))
    return model


def test_batched_actions_must_have_leading_axis_n() -> None:
    obs2, obs4 = np.zeros((2, 4), np.float32), np.zeros((4, 4), np.float32)
    with pytest.raises(InvalidActionError, match=r"expected an integer array of shape \(4,\).*shape \(3,\)"):
        batch_model(np.zeros(3, int), 4).act_batch(obs4)
    with pytest.raises(InvalidActionError, match=r"predict_batch returned None; expected one action per lane"):
        batch_model(None, 2).act_batch(obs2)
    with pytest.raises(InvalidActionError, match=r"action\['move'\]: expected an array of shape \(2, 2\).*NoneType"):
        batch_model({"move": None, "jump": np.zeros(2, int)}, 2, DICT).act_batch(obs2)
    with pytest.raises(InvalidActionError, match=r"action\['move'\]: .*found list"):
        batch_model({"move": [[0.1, 0.2], [0.3]], "jump": np.zeros(2, int)}, 2, DICT).act_batch(obs2)
    with pytest.raises(InvalidActionError, match="list of 3 actions"):
        batch_model([0, 1, 0], 2).act_batch(obs2)
    with pytest.raises(InvalidActionError, match=r"action\['jump'\] for lane 1: expected an integer in \[0, 2\)"):
        batch_model({"move": np.zeros((2, 2)), "jump": np.array([0, 2])}, 2, DICT).act_batch(obs2)


def test_a_list_of_per_lane_actions_is_stacked() -> None:
    lanes = [{"move": np.zeros(2), "jump": 1}, {"move": np.ones(2), "jump": 0}]
    batch = batch_model(lanes, 2, DICT).act_batch(np.zeros((2, 4), np.float32))
    np.testing.assert_array_equal(batch["jump"], [1, 0])
    assert batch["move"].shape == (2, 2)
    with pytest.raises(InvalidActionError, match=r"do not stack into one batch"):
        batch_model([np.zeros(2), np.zeros(3)], 2, BOX2).act_batch(np.zeros((2, 4), np.float32))


def test_default_predict_batch_splits_lanes_following_the_spec() -> None:
    seen: list[Any] = []

    def predict(obs: Any) -> Any:
        seen.append(obs)
        return {"move": np.zeros(2, np.float32), "jump": 0}

    model = NumpyModel(predict)
    model.prepare(EnvContract(DICT, DICT, id="Test-v0", num_envs=3))
    model.act_batch({"move": np.arange(6.0, dtype=np.float32).reshape(3, 2), "jump": np.array([0, 1, 0])})
    np.testing.assert_array_equal(seen[1]["move"], [2.0, 3.0])
    assert seen[1]["jump"] == 1
    tensors: list[Any] = []
    plain = Model(lambda obs: tensors.append(obs) or 0)
    plain.prepare(contract(num_envs=2))
    plain.act_batch(Tensor.from_numpy(np.arange(8.0, dtype=np.float32).reshape(2, 4)))
    assert isinstance(tensors[1], Tensor) and tensors[1].numpy().tolist() == [4.0, 5.0, 6.0, 7.0]


def test_default_predict_batch_calls_predict_per_lane() -> None:
    calls: list[tuple[int, ...]] = []

    def predict(obs: np.ndarray) -> int:
        calls.append(obs.shape)
        return int(obs[0] > 0)

    model = NumpyModel(predict, spec=contract())
    model.prepare(contract(num_envs=3))
    actions = model.act_batch(np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [2.0, 0, 0, 0]], np.float32))
    np.testing.assert_array_equal(actions, [1, 0, 1])
    assert calls == [(4,), (4,), (4,)]


def test_predict_is_derived_from_predict_batch() -> None:
    seen: list[tuple[int, ...]] = []

    def predict_batch(obs: np.ndarray) -> np.ndarray:
        seen.append(obs.shape)
        return (obs[:, 0] > 0).astype(np.int64)

    model = NumpyModel(predict_batch_fn=predict_batch, spec=contract())
    model.prepare(contract())
    assert model.act(np.array([1.0, 0, 0, 0], np.float32)) == 1
    assert seen == [(1, 4)]


def test_vmap_derives_predict_batch_with_jax() -> None:
    jnp = pytest.importorskip("jax.numpy")
    import rlmesh.jax as rj

    traced: list[Any] = []

    def predict(obs: Any) -> Any:
        traced.append(type(obs).__name__)
        return (obs[0] > 0).astype(jnp.int32)

    model = rj.Model(predict, vmap=True, spec=contract())
    model.prepare(contract(num_envs=2))
    actions = model.act_batch(jnp.asarray([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
    np.testing.assert_array_equal(actions, [1, 0])
    assert len(traced) == 1  # one vmapped trace, not one call per lane


def test_invalid_single_action_names_the_action_and_the_space() -> None:
    model = NumpyModel(lambda obs: 7, spec=contract())
    model.prepare(contract())
    with pytest.raises(InvalidActionError, match=r"returned an invalid action for Test-v0.*Discrete\(2\).*was 7"):
        model.act(np.zeros(4, np.float32))


def test_invalid_batched_action_names_the_lanes_and_the_space() -> None:
    model = NumpyModel(predict_batch_fn=lambda obs: np.array([0, 5]), spec=contract())
    model.prepare(contract(num_envs=2))
    with pytest.raises(InvalidActionError, match=r"predict_batch returned an invalid action.*Discrete\(2\) \(2 lanes"):
        model.act_batch(np.zeros((2, 4), np.float32))


# -- conversions -----------------------------------------------------------------------------


def test_converter_re_decodes_tensors_and_arrays_for_the_target_backend() -> None:
    tree = {"a": Tensor.from_numpy(np.arange(3.0)), "b": (np.int64(2), "text"), "c": np.ones(2, np.float32)}
    numpy_tree = converter(TENSOR_BRIDGE, NUMPY_BRIDGE)(tree)
    assert isinstance(numpy_tree["a"], np.ndarray) and numpy_tree["a"].tolist() == [0.0, 1.0, 2.0]
    assert numpy_tree["b"] == (2, "text") and type(numpy_tree["b"][0]) is int
    tensor_tree = converter(NUMPY_BRIDGE, TENSOR_BRIDGE)(numpy_tree)
    assert isinstance(tensor_tree["c"], Tensor) and tensor_tree["c"].numpy().tolist() == [1.0, 1.0]


def test_converter_to_jax() -> None:
    jax = pytest.importorskip("jax")
    from rlmesh.jax import JAX_BRIDGE

    tensor = Tensor.from_numpy(np.arange(4, dtype=np.float32))
    converted = converter(TENSOR_BRIDGE, JAX_BRIDGE)({"x": tensor, "y": np.zeros(2, np.float32)})
    assert isinstance(converted["x"], jax.Array) and isinstance(converted["y"], jax.Array)
    assert converted["x"].unsafe_buffer_pointer() == tensor.data_ptr  # zero-copy from a Tensor


# -- results ---------------------------------------------------------------------------------


def test_run_result_aggregates_and_orders_episodes() -> None:
    episodes = [
        EpisodeResult(1, 11, 20, 2.0, False, True, False, 0.1),
        EpisodeResult(0, 10, 10, 4.0, True, False, True, 0.1),
    ]
    result = RunResult.from_episodes(episodes, 2.0)
    assert [e.index for e in result.episodes] == [0, 1]
    assert result.num_episodes == 2 and result.total_steps == 30
    assert result.mean_reward == 3.0 and result.std_reward == 1.0
    assert result.success_rate == 0.5 and result.steps_per_s == 15.0
    assert result.rewards == [4.0, 2.0]
    assert "2 episodes, 30 steps" in result.summary()
    with pytest.raises(AttributeError):
        result.mean_reward = 0.0  # type: ignore[misc]


def test_run_arguments_are_checked() -> None:
    model = NumpyModel(cartpole_policy)
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="max_episodes must be a positive int"):
        model.run(env, max_episodes=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        model.run(env, seeds=[-1])
    with pytest.raises(TypeError, match="seeds must be a sequence"):
        model.run(env, seeds=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot run on int"):
        model.run(42)
    assert DEFAULT_MAX_EPISODE_STEPS == 100_000


def test_progress_true_without_tqdm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r'pip install "rlmesh\[progress\]"'):
        NumpyModel(cartpole_policy).run(gym.make("CartPole-v1"), progress=True)


# -- local gymnasium envs --------------------------------------------------------------------


def hand_loop(env: gym.Env, seeds: list[int]) -> list[tuple[float, int]]:
    out = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, steps = 0.0, 0
        while True:
            obs, reward, terminated, truncated, _ = env.step(cartpole_policy(obs))
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        out.append((total, steps))
    return out


def test_local_env_run_equals_a_hand_written_loop() -> None:
    seeds = [0, 1, 2]
    expected = hand_loop(gym.make("CartPole-v1"), seeds)
    result = NumpyModel(cartpole_policy).run(gym.make("CartPole-v1"), seeds=seeds, progress=False)
    assert [(e.reward, e.steps) for e in result.episodes] == expected
    assert [e.seed for e in result.episodes] == seeds
    assert result.total_steps == sum(steps for _, steps in expected)


def test_local_vector_env_matches_single_env_episodes() -> None:
    seeds = [3, 4, 5, 6, 7]
    expected = hand_loop(gym.make("CartPole-v1"), seeds)
    vector = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
    result = NumpyModel(cartpole_policy).run(vector, seeds=seeds)
    assert [(e.reward, e.steps) for e in result.episodes] == expected
    assert [e.lane for e in result.episodes] == [0, 1, 0, 1, 0]
    vector.close()


def test_plain_model_receives_tensors_from_a_local_env() -> None:
    seen: list[type] = []

    def predict(obs: Any) -> int:
        seen.append(type(obs))
        return cartpole_policy(obs.numpy())

    result = Model(predict).run(gym.make("CartPole-v1"), seeds=[0])
    assert set(seen) == {Tensor} and result.num_episodes == 1


def test_step_cap_truncates_instead_of_hanging() -> None:
    result = NumpyModel(cartpole_policy).run(gym.make("CartPole-v1"), seeds=[0, 1], max_episode_steps=5)
    assert [(e.steps, e.truncated, e.terminated) for e in result.episodes] == [(5, True, False)] * 2


def test_max_episodes_beyond_the_seeds_continues_unseeded() -> None:
    result = NumpyModel(cartpole_policy).run(gym.make("CartPole-v1"), seeds=[0], max_episodes=3)
    assert [e.seed for e in result.episodes] == [0, None, None]


def test_success_comes_from_info_or_is_unknown() -> None:
    class Succeeds(gym.Wrapper):
        def step(self, action: Any) -> Any:
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, reward, terminated, truncated, {**info, "is_success": reward > 0 and truncated}

    result = evaluate(NumpyModel(cartpole_policy), Succeeds(gym.make("CartPole-v1")), seeds=[0, 1], max_episodes=2)
    assert [e.success for e in result.episodes] == [e.truncated for e in result.episodes]
    plain = NumpyModel(cartpole_policy).run(gym.make("CartPole-v1"), seeds=[0])
    assert plain.episodes[0].success is None and math.isnan(plain.success_rate)  # CartPole says nothing
    assert "success" not in plain.summary()


def test_model_exception_propagates_with_a_note() -> None:
    def broken(obs: Any) -> int:
        raise RuntimeError("policy exploded")

    with pytest.raises(RuntimeError, match="policy exploded") as info:
        NumpyModel(broken).run(gym.make("CartPole-v1"))
    assert any("raised while running Model" in note for note in info.value.__notes__)


def test_hooks_load_episode_end_and_close() -> None:
    events: list[str] = []

    class Hooked(NumpyModel):
        def load(self) -> None:
            events.append("load")

    model = Hooked(
        cartpole_policy,
        on_episode_end=lambda e: events.append(f"end {e.index}"),
        on_close=lambda: events.append("close"),
    )
    model.run(gym.make("CartPole-v1"), seeds=[0, 1])
    model.run(gym.make("CartPole-v1"), seeds=[2])
    with model:
        pass
    model.close()
    assert events == ["load", "end 0", "end 1", "end 0", "close"]


def test_random_sample_on_a_local_env_repeats_with_the_same_seeds() -> None:
    first = rlmesh.models.run(RANDOM_SAMPLE, gym.make("CartPole-v1"), seeds=[0, 1, 2])
    second = run(RANDOM_SAMPLE, gym.make("CartPole-v1"), seeds=[0, 1, 2])
    assert first.rewards == second.rewards and first.num_episodes == 3


def test_jax_device_placement() -> None:
    jax = pytest.importorskip("jax")
    import rlmesh.jax as rj

    devices: list[Any] = []

    def predict(obs: Any) -> int:
        devices.append(next(iter(obs.devices())))
        return int(obs[2] + obs[3] > 0)

    model = rj.Model(predict, device="cpu")
    assert model.device == jax.devices("cpu")[0]
    model.run(gym.make("CartPole-v1"), seeds=[0], max_episode_steps=3)
    assert set(devices) == {jax.devices("cpu")[0]}
    with pytest.raises(ValueError, match="not available to JAX"):
        _ = rj.Model(predict, device="cpu:7").device
