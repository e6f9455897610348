"""Steps through shared memory as fixed-layout records: used when they can be, same values always."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from envs import DictTupleEnv
from gymnasium import spaces

import rlmesh
import rlmesh.numpy as rn
from rlmesh.connection import Connection
from rlmesh.shm.region import MESSAGE, RECORD_ARRAY, RECORD_SCALAR, REPLY_KIND, REQUEST_KIND, REQUEST_SEQ


def connection_of(env: object) -> Connection:
    return env._group.members[0].connection  # type: ignore[attr-defined]


def encoded(env: Any) -> Any:
    """Make ``env`` send every step over its socket as an encoded message (the reference path)."""
    connection_of(env)._record_frames = None
    return env


def reply_kind(env: object) -> int:
    channel = connection_of(env)._channel
    assert channel is not None
    return int(channel.words[REPLY_KIND])


class ActionEcho(gym.Env):
    """Reports the type and value of each action it receives; every ``odd`` step is unusual.

    Unusual steps return a float64 observation for the float32 space (Gymnasium allows it)
    and a non-empty info, neither of which a record can carry.
    """

    def __init__(self, shape: tuple[int, ...] = ()) -> None:
        self.observation_space = spaces.Box(-1e6, 1e6, (3,), np.float32)
        self.action_space = spaces.Discrete(5) if shape == () else spaces.Box(-1.0, 1.0, shape, np.float32)
        self.seen: list[tuple[str, Any]] = []
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(3, np.float32), {}

    def step(self, action: Any) -> Any:
        self._t += 1
        self.seen.append((type(action).__name__, np.asarray(action).tolist()))
        value = float(np.asarray(action).sum())
        if self._t % 2:
            return np.array([self._t, value, 1.5], np.float64), 0.5, False, False, {"t": self._t}
        return np.array([self._t, value, 0.25], np.float32), 1.0, self._t % 4 == 0, False, {}


# Actions for a float32 Box of shape (2,), some of which a record cannot carry.
BOX_ACTIONS = [
    np.array([0.5, -0.5], np.float32),
    np.array([0.25, 0.75]),  # float64 does not fit float32 exactly: encoded, cast by the server
    [0.1, 0.2],
    np.array([1.0, 1.0], np.float16),  # widens exactly: a record
    np.array([1, 0], np.int32),  # another kind: encoded
]


def side_by_side(first: Any, second: Any, actions: list[Any], seed: int) -> tuple[list[Any], list[Any]]:
    """Reset both envs with ``seed`` and step both with each action; their results."""
    got, expected = [first.reset(seed=seed)], [second.reset(seed=seed)]
    for action in actions:
        got.append(first.step(action))
        expected.append(second.step(action))
    return got, expected


def run(env: Any, actions: list[Any]) -> list[Any]:
    out: list[Any] = [env.reset(seed=0)]
    for action in actions:
        out.append(env.step(action))
    return out


def assert_same(got: list[Any], expected: list[Any]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert type(a) is type(b)
            if isinstance(a, np.ndarray):
                assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            else:
                assert a == b


def test_cartpole_steps_travel_as_records_with_the_values_of_encoded_steps(serve, tmp_path: Path) -> None:
    server = serve("CartPole-v1", f"unix://{tmp_path}/env.sock")
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 2, 300)]
    with rn.RemoteEnv(server.address) as fast, encoded(rn.RemoteEnv(server.address, shared_memory=False)) as plain:
        assert connection_of(fast)._channel.record is not None  # type: ignore[union-attr]
        got, expected = [fast.reset(seed=3)], [plain.reset(seed=3)]
        for action in actions:
            got.append(fast.step(action))
            assert reply_kind(fast) == RECORD_ARRAY
            expected.append(plain.step(action))
            if got[-1][2] or got[-1][3]:
                got.append(fast.reset())
                expected.append(plain.reset())
    assert_same(got, expected)


def test_actions_reach_the_env_as_encoded_ones_would(serve, tmp_path: Path) -> None:
    envs: list[ActionEcho] = []

    def make() -> ActionEcho:
        envs.append(ActionEcho())
        return envs[-1]

    server = serve(make, f"unix://{tmp_path}/env.sock")
    actions = [3, np.int64(2), np.array(4), np.int32(1), np.array(0, np.int64), np.array([1])[0], np.uint8(2)]
    with rn.RemoteEnv(server.address) as fast, encoded(rn.RemoteEnv(server.address, shared_memory=False)) as plain:
        channel = connection_of(fast)._channel
        assert channel is not None and channel.record is not None
        kinds = []
        fast.reset(seed=0)
        plain.reset(seed=0)
        for action in actions:
            fast.step(action)
            kinds.append(int(channel.words[REQUEST_KIND]))
            plain.step(action)
    # Python ints, signed integer scalars and 0-d arrays take records (widened to int64); a
    # uint8 (another kind of integer) is encoded.
    assert kinds == [RECORD_SCALAR] * 6 + [MESSAGE]
    fast_env, plain_env = envs  # the first serves the first session
    assert fast_env.seen == plain_env.seen


def test_array_actions_and_replies_records_cannot_carry(serve, tmp_path: Path) -> None:
    envs: list[ActionEcho] = []

    def make() -> ActionEcho:
        envs.append(ActionEcho((2,)))
        return envs[-1]

    server = serve(make, f"unix://{tmp_path}/env.sock")
    actions = BOX_ACTIONS * 3
    with rn.RemoteEnv(server.address) as fast, encoded(rn.RemoteEnv(server.address, shared_memory=False)) as plain:
        kinds = []
        got, expected = [fast.reset(seed=0)], [plain.reset(seed=0)]
        for action in actions:
            got.append(fast.step(action))
            kinds.append(reply_kind(fast))
            expected.append(plain.step(action))
    assert_same(got, expected)
    assert envs[0].seen == envs[1].seen
    assert set(kinds) == {MESSAGE, RECORD_ARRAY}  # odd steps carry an info and a float64 observation
    assert got[1][0].dtype == np.float64 and got[2][0].dtype == np.float32


def test_kept_record_observations_are_never_overwritten(serve, tmp_path: Path) -> None:
    class Counting(gym.Env):
        observation_space = spaces.Box(0.0, 1e9, (128, 128), np.float32)
        action_space = spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            self.t = 0
            return np.zeros((128, 128), np.float32), {}

        def step(self, action: Any) -> Any:
            self.t += 1
            return np.full((128, 128), self.t, np.float32), 0.0, False, False, {}

    server = serve(Counting, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        kept = []
        for _ in range(10):  # more than there are reply slots
            kept.append(env.step(0)[0])
            assert reply_kind(env) == RECORD_ARRAY
        for t, obs in enumerate(kept, start=1):
            assert obs.min() == obs.max() == t
        views = [obs[5:6] for obs in kept[:3]]
        del kept
        for _ in range(5):
            env.step(1)
        assert [float(v[0, 0]) for v in views] == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("lanes", [1, 5])
def test_vector_steps_travel_as_records_across_autoresets(serve, tmp_path: Path, lanes: int) -> None:
    def make() -> gym.vector.SyncVectorEnv:
        return gym.vector.SyncVectorEnv(
            [lambda: gym.make("CartPole-v1") for _ in range(lanes)],
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )

    server = serve(make, f"unix://{tmp_path}/env.sock")
    local = make()
    actions = np.random.default_rng(1).integers(0, 2, (200, lanes))
    with rn.RemoteVectorEnv(server.address) as env:
        got, expected = [env.reset(seed=7)], [local.reset(seed=7)]
        for action in actions:
            got.append(env.step(action))
            assert reply_kind(env) == RECORD_ARRAY
            expected.append(local.step(action))
    assert_same(got, expected)


def test_spaces_records_cannot_describe_keep_encoded_messages(serve, tmp_path: Path) -> None:
    server = serve(DictTupleEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        channel = connection_of(env)._channel
        assert channel is not None and channel.record is None
        env.reset(seed=0)
        env.step(env.action_space.sample())
        assert reply_kind(env) == MESSAGE


def test_a_record_the_server_did_not_agree_to_gets_an_error_and_the_session_goes_on(serve, tmp_path: Path) -> None:
    server = serve(DictTupleEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        channel = connection_of(env)._channel
        assert channel is not None
        channel.words[REQUEST_KIND] = RECORD_ARRAY
        channel.sent += 1
        channel.words[REQUEST_SEQ] = channel.sent
        channel.request_bell.ring()
        deadline = time.monotonic() + 5
        while not channel.replied() and time.monotonic() < deadline:
            time.sleep(0.01)
        header, payload = channel.receive(None)
        assert header.kind == "error" and payload["code"] == "protocol"
        assert "step record" in payload["message"]
        env.step(env.action_space.sample())
    with rn.RemoteEnv(server.address) as other:
        assert other.reset(seed=0)[0] is not None


def test_invalid_actions_are_refused_the_same_way(serve, tmp_path: Path) -> None:
    server = serve("CartPole-v1", f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address, validate_actions=False) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match="Discrete"):
            env.step(7)  # an int64 in the record's layout, outside the space: the server refuses
        with pytest.raises(rlmesh.InvalidActionError):
            env.step(2**63)  # no int64 holds it: encoded, and the server refuses it as before
        assert env.step(1)[1] == 1.0
