"""Model.run / rlmesh.models.run against real EnvServers on loopback."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from envs import CrashingEnv, DictTupleEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh import Model
from rlmesh.errors import EnvBusyError, InvalidActionError, RemoteEnvError
from rlmesh.models import RANDOM_SAMPLE, run
from rlmesh.tensor import Tensor

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

import rlmesh.jax as rj  # noqa: E402

NumpyModel = rlmesh.numpy.Model


def controller(obs: Any) -> int:
    """CartPole: push toward the side the pole falls to (works on any array type)."""
    values = np.asarray(obs.numpy() if isinstance(obs, Tensor) else obs)
    return int(values[2] + values[3] > 0)


def vector_factory(num_envs: int = 3) -> Any:
    return lambda: gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync")


def hand_single(client: Any, seeds: list[int]) -> list[tuple[int, float, int]]:
    """(seed, reward, steps) per episode, written out by hand."""
    out = []
    for seed in seeds:
        obs, _ = client.reset(seed=seed)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = client.step(controller(obs))
            total += reward
            steps += 1
            done = terminated or truncated
        out.append((seed, total, steps))
    return out


def hand_vector(client: Any, seeds: list[int]) -> list[tuple[int, float, int]]:
    """The documented schedule by hand: chunks of num_envs seeds, first episode of each lane."""
    n = client.num_envs
    out: list[tuple[int, float, int]] = []
    for start in range(0, len(seeds), n):
        chunk = seeds[start : start + n]
        obs, _ = client.reset(seed=chunk + [None] * (n - len(chunk)))
        totals, steps = np.zeros(n), np.zeros(n, int)
        running = np.arange(n) < len(chunk)
        while running.any():
            actions = np.array([int(o[2] + o[3] > 0) for o in obs])
            obs, rewards, terminated, truncated, _ = client.step(actions)
            totals += np.where(running, rewards, 0.0)
            steps += running
            running &= ~(terminated | truncated)
        out.extend((seed, float(totals[i]), int(steps[i])) for i, seed in enumerate(chunk))
    return out


def triples(result: rlmesh.models.RunResult) -> list[tuple[int | None, float, int]]:
    return [(e.seed, e.reward, e.steps) for e in result.episodes]


# -- equality with hand-written loops --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["plain", "numpy", "jax"])
def test_single_run_equals_a_hand_written_loop(serve, backend) -> None:
    server = serve("CartPole-v1")
    seeds = [0, 1, 2, 3]
    with rn.RemoteEnv(server.address) as client:
        expected = hand_single(client, seeds)
    model = {"plain": Model, "numpy": NumpyModel, "jax": rj.Model}[backend](controller)
    by_address = model.run(server.address, seeds=seeds)
    assert triples(by_address) == expected
    assert by_address.total_steps == sum(steps for _, _, steps in expected)
    assert by_address.mean_reward == pytest.approx(np.mean([r for _, r, _ in expected]))
    assert [e.index for e in by_address.episodes] == [0, 1, 2, 3]
    client_class = {"plain": rlmesh.RemoteEnv, "numpy": rn.RemoteEnv, "jax": rj.RemoteEnv}[backend]
    with client_class(server.address) as client:
        assert triples(model.run(client, seeds=seeds)) == expected
        assert not client.closed  # the caller's client stays open


def test_vector_run_equals_a_hand_written_loop_and_single_env_episodes(serve) -> None:
    vector = serve(vector_factory(3))
    single = serve("CartPole-v1")
    seeds = [10, 11, 12, 13, 14, 15, 16]
    with rn.RemoteVectorEnv(vector.address) as client:
        expected = hand_vector(client, seeds)
        result = NumpyModel(controller).run(client, seeds=seeds)
    assert triples(result) == expected
    assert [e.lane for e in result.episodes] == [0, 1, 2, 0, 1, 2, 0]
    assert result.total_steps == sum(steps for _, _, steps in expected)
    with rn.RemoteEnv(single.address) as client:
        assert triples(result) == hand_single(client, seeds)  # each episode is the one its seed names
    assert triples(NumpyModel(controller).run(vector.address, seeds=seeds)) == expected


def test_predict_batch_is_called_once_per_vector_step_with_fused_observations(serve) -> None:
    server = serve(vector_factory(4))
    shapes: list[tuple[int, ...]] = []
    types: set[type] = set()

    def predict_batch(obs: Any) -> Any:
        shapes.append(tuple(obs.shape))
        types.add(type(obs))
        return (obs[:, 2] + obs[:, 3] > 0).astype(jnp.int32)

    with rj.RemoteVectorEnv(server.address) as client:
        steps = 0
        original = client.step

        def counting_step(actions: Any) -> Any:
            nonlocal steps
            steps += 1
            return original(actions)

        client.step = counting_step  # type: ignore[method-assign]
        result = rj.Model(predict_batch_fn=predict_batch).run(client, seeds=list(range(6)))
    assert result.num_episodes == 6
    assert len(shapes) == steps > 0
    assert set(shapes) == {(4, 4)} and all(issubclass(t, jax.Array) for t in types)


def test_per_lane_predict_on_a_vector_env_with_dict_spaces(serve) -> None:
    server = serve(lambda: gym.vector.SyncVectorEnv([DictTupleEnv, DictTupleEnv]))
    lanes_seen: list[Any] = []

    def predict(obs: dict[str, Any]) -> dict[str, Any]:
        lanes_seen.append(obs["position"].shape)
        return {"move": np.clip(obs["position"][:2], -1, 1), "jump": int(obs["pair"][0] > 2)}

    result = NumpyModel(predict).run(server.address, seeds=[1, 2, 3])
    assert [e.steps for e in result.episodes] == [20, 20, 20]
    assert set(lanes_seen) == {(3,)}


# -- backends ----------------------------------------------------------------------------------------


def test_observations_are_re_decoded_for_the_model_backend(serve) -> None:
    single = serve("CartPole-v1")
    vector = serve(vector_factory(2))
    seen: list[type] = []

    def jax_policy(obs: Any) -> Any:
        seen.append(type(obs))
        return (obs[2] + obs[3] > 0).astype(jnp.int32)

    with rn.RemoteEnv(single.address) as numpy_client, rlmesh.RemoteEnv(single.address) as plain_client:
        a = rj.Model(jax_policy).run(numpy_client, seeds=[5])
        b = rj.Model(jax_policy).run(plain_client, seeds=[5])
    assert triples(a) == triples(b) and all(issubclass(t, jax.Array) for t in seen)

    numpy_seen: list[type] = []

    def numpy_batch(obs: np.ndarray) -> np.ndarray:
        numpy_seen.append(type(obs))
        return (obs[:, 2] + obs[:, 3] > 0).astype(np.int64)

    with rj.RemoteVectorEnv(vector.address) as jax_client:
        c = NumpyModel(predict_batch_fn=numpy_batch).run(jax_client, seeds=[5, 6])
    assert set(numpy_seen) == {np.ndarray} and c.episodes[0].reward == a.episodes[0].reward


def test_sandbox_style_sessions_are_driven_through_their_client(serve) -> None:
    server = serve("CartPole-v1")

    class Session:
        """What rlmesh.sandbox's SandboxEnv exposes to run(): an owned ``.client``."""

        def __init__(self, address: str) -> None:
            self.client = rn.RemoteEnv(address)

    session = Session(server.address)
    result = NumpyModel(controller).run(session, seeds=[0])
    with rn.RemoteEnv(serve("CartPole-v1").address) as client:
        assert triples(result) == hand_single(client, [0])
    session.client.close()


def test_an_address_run_closes_its_client(serve) -> None:
    server = serve(gym.make("CartPole-v1"))  # one env object: a second live client is refused
    NumpyModel(controller).run(server.address, seeds=[0])
    with rn.RemoteEnv(server.address) as client:
        client.reset(seed=0)
        with pytest.raises(EnvBusyError):
            rn.RemoteEnv(server.address, connect_timeout_seconds=2)


# -- errors ----------------------------------------------------------------------------------------


def test_invalid_model_output_names_the_action_and_the_space(serve) -> None:
    single = serve("CartPole-v1")
    vector = serve(vector_factory(2))
    with pytest.raises(InvalidActionError, match=r"predict returned an invalid action for CartPole-v1.*Discrete\(2\)"):
        NumpyModel(lambda obs: 2).run(single.address)
    with pytest.raises(InvalidActionError, match=r"action.*\(Box.*the action space is Box"):
        NumpyModel(lambda obs: np.array([5.0], np.float32)).run(serve("Pendulum-v1").address)
    with pytest.raises(InvalidActionError, match=r"integer array of shape \(2,\).*found .* shape \(3,\)"):
        NumpyModel(predict_batch_fn=lambda obs: np.zeros(3, int)).run(vector.address)
    with pytest.raises(ValueError, match="None"):
        NumpyModel(predict_batch_fn=lambda obs: None).run(vector.address)
    with pytest.raises(InvalidActionError, match=r"predict_batch returned an invalid action.*for lane 1.*2 lanes"):
        NumpyModel(predict_batch_fn=lambda obs: np.array([0, 3])).run(vector.address)


def test_a_model_exception_ends_the_run_and_frees_the_env(serve) -> None:
    server = serve(gym.make("CartPole-v1"))

    def explode(obs: Any) -> int:
        raise ZeroDivisionError("model bug")

    with pytest.raises(ZeroDivisionError, match="model bug"):
        NumpyModel(explode).run(server.address)
    with rn.RemoteEnv(server.address, connect_timeout_seconds=5) as client:  # not busy: closed
        client.reset()


def test_an_env_exception_ends_the_run(serve) -> None:
    server = serve(CrashingEnv)
    with pytest.raises(RemoteEnvError, match="boom at step 3") as info:
        NumpyModel(lambda obs: 0).run(server.address, seeds=[0])
    assert any("episode 0 of 1" in note for note in info.value.__notes__)


@pytest.mark.parametrize("num_envs", [None, 2])
def test_a_killed_env_server_ends_the_run_with_an_exception(serve_process, num_envs) -> None:
    args = ["CartPole-v1"] + ([] if num_envs is None else ["--num-envs", str(num_envs)])
    server = serve_process(*args)
    calls = 0

    def kill_then_act(obs: Any) -> int:
        nonlocal calls
        calls += 1
        if calls == 5:
            server.kill()
        return 0

    started = time.monotonic()
    with pytest.raises(ConnectionError):
        NumpyModel(kill_then_act).run(server.address, max_episodes=1000, max_episode_steps=10_000)
    assert time.monotonic() - started < 30


# -- the rest of the contract -------------------------------------------------------------------


def test_random_sample_baseline(serve) -> None:
    single = serve("CartPole-v1")
    vector = serve(vector_factory(3))
    first = run(RANDOM_SAMPLE, single.address, seeds=[0, 1, 2, 3, 4])
    again = rlmesh.models.run(RANDOM_SAMPLE, single.address, seeds=[0, 1, 2, 3, 4])
    assert first.num_episodes == 5 and first.rewards == again.rewards
    assert 5 <= first.mean_reward < 100  # random CartPole play, far below the controller's
    batched = run(RANDOM_SAMPLE, vector.address, seeds=[0, 1, 2, 3])
    assert batched.num_episodes == 4
    assert batched.rewards == run(RANDOM_SAMPLE, vector.address, seeds=[0, 1, 2, 3]).rewards
    assert NumpyModel(controller).run(single.address, seeds=[0, 1, 2, 3, 4]).mean_reward > first.mean_reward


def test_episode_count_seeds_and_step_cap(serve) -> None:
    server = serve("CartPole-v1")
    vector = serve(vector_factory(2))
    assert NumpyModel(controller).run(server.address).num_episodes == 1
    three = NumpyModel(controller).run(server.address, seeds=[7], max_episodes=3)
    assert [e.seed for e in three.episodes] == [7, None, None]
    capped = NumpyModel(controller).run(vector.address, seeds=[0, 1, 2], max_episode_steps=4)
    assert [(e.steps, e.truncated) for e in capped.episodes] == [(4, True)] * 3
    assert capped.total_steps == 12


def test_progress_bar_on_request(serve, capsys) -> None:
    server = serve("CartPole-v1")
    NumpyModel(controller).run(server.address, seeds=[0, 1], progress=True)
    err = capsys.readouterr().err
    assert "CartPole-v1" in err and "2/2" in err
    NumpyModel(controller).run(server.address, seeds=[0], progress=False)
    assert capsys.readouterr().err == ""


def test_on_episode_end_sees_each_episode(serve) -> None:
    server = serve(vector_factory(2))
    ended: list[tuple[int, int | None]] = []
    model = NumpyModel(controller, on_episode_end=lambda e: ended.append((e.index, e.lane)))
    model.run(server.address, seeds=[0, 1, 2])
    assert sorted(ended) == [(0, 0), (1, 1), (2, 0)]


def test_plain_model_on_a_vector_env_gets_tensor_lanes(serve) -> None:
    server = serve(vector_factory(2))
    seen: set[type] = set()

    def predict(obs: Any) -> int:
        seen.add(type(obs))
        return controller(obs)

    with rlmesh.RemoteVectorEnv(server.address) as client:
        result = Model(predict).run(client, seeds=[0, 1, 2])
    with rn.RemoteVectorEnv(server.address) as client:
        expected = hand_vector(client, [0, 1, 2])
    assert triples(result) == expected and seen == {Tensor}
