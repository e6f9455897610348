"""Steps as single ZeroMQ record frames (tcp without the step stream, or unix without shared memory)."""

from __future__ import annotations

import struct
from typing import Any

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq
from envs import DictTupleEnv
from test_errors import decode_reply, still_serves
from test_step_records import BOX_ACTIONS, ActionEcho, assert_same, connection_of, encoded, side_by_side

import rlmesh
import rlmesh.jax as rj
import rlmesh.numpy as rn
from rlmesh import stream
from rlmesh.protocol import PROTOCOL_VERSION
from rlmesh.record import RECORD_TAG


@pytest.fixture(autouse=True)
def _zeromq_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep tcp steps on ZeroMQ: test_tcp_stream.py covers the same records over the stream."""
    monkeypatch.setenv(stream.ENVIRONMENT_SWITCH, "0")


class RecordCounter:
    """Counts the step replies a client read as record frames."""

    def __init__(self, env: object) -> None:
        connection = connection_of(env)
        assert connection._record_frames is not None
        self.count = 0
        read = connection._read_record

        def counted(*args: Any) -> Any:
            self.count += 1
            return read(*args)

        connection._read_record = counted  # type: ignore[method-assign]


def test_cartpole_steps_travel_as_record_frames_with_the_values_of_encoded_steps(serve) -> None:
    server = serve("CartPole-v1")
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 2, 300)]
    with rn.RemoteEnv(server.address) as framed, encoded(rn.RemoteEnv(server.address)) as plain:
        counter = RecordCounter(framed)
        got, expected = [framed.reset(seed=3)], [plain.reset(seed=3)]
        for action in actions:
            got.append(framed.step(action))
            expected.append(plain.step(action))
            if got[-1][2] or got[-1][3]:
                got.append(framed.reset())
                expected.append(plain.reset())
    assert counter.count == len(actions)
    assert_same(got, expected)


def test_unix_clients_without_shared_memory_use_record_frames(serve, tmp_path) -> None:
    server = serve("CartPole-v1", f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address, shared_memory=False) as env:
        assert connection_of(env)._channel is None
        counter = RecordCounter(env)
        env.reset(seed=0)
        for _ in range(5):
            env.step(1)
    assert counter.count == 5


def test_actions_reach_the_env_as_encoded_ones_would(serve) -> None:
    envs: list[ActionEcho] = []

    def make() -> ActionEcho:
        envs.append(ActionEcho())
        return envs[-1]

    server = serve(make)
    actions = [3, np.int64(2), np.array(4), np.int32(1), np.array(0, np.int64), np.array([1])[0], np.uint8(2)]
    with rn.RemoteEnv(server.address) as framed, encoded(rn.RemoteEnv(server.address)) as plain:
        counter = RecordCounter(framed)
        got, expected = side_by_side(framed, plain, actions, seed=0)
    framed_env, plain_env = envs
    assert framed_env.seen == plain_env.seen  # Python numbers for scalars, as decoded ones
    assert_same(got, expected)
    # Odd steps return a float64 observation and an info: encoded. Even steps are records.
    assert counter.count == 3


def test_box_actions_and_replies_records_cannot_carry(serve) -> None:
    envs: list[ActionEcho] = []

    def make() -> ActionEcho:
        envs.append(ActionEcho((2,)))
        return envs[-1]

    server = serve(make)
    with rn.RemoteEnv(server.address) as framed, encoded(rn.RemoteEnv(server.address)) as plain:
        got, expected = side_by_side(framed, plain, BOX_ACTIONS * 2, seed=0)
    assert_same(got, expected)
    assert envs[0].seen == envs[1].seen


@pytest.mark.parametrize("lanes", [1, 5])
def test_vector_steps_travel_as_record_frames_across_autoresets(serve, lanes: int) -> None:
    def make() -> gym.vector.SyncVectorEnv:
        return gym.vector.SyncVectorEnv(
            [lambda: gym.make("CartPole-v1") for _ in range(lanes)],
            autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        )

    server = serve(make)
    local = make()
    actions = np.random.default_rng(1).integers(0, 2, (200, lanes))
    with rn.RemoteVectorEnv(server.address) as env:
        counter = RecordCounter(env)
        got, expected = [env.reset(seed=7)], [local.reset(seed=7)]
        for action in actions:
            got.append(env.step(action))
            expected.append(local.step(action))
    assert counter.count == len(actions)
    assert_same(got, expected)


def test_jax_clients_get_jax_arrays_from_record_frames(serve) -> None:
    server = serve(lambda: gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync"))
    with rj.RemoteVectorEnv(server.address) as framed, encoded(rj.RemoteVectorEnv(server.address)) as plain:
        counter = RecordCounter(framed)
        framed.reset(seed=5)
        plain.reset(seed=5)
        for step in range(20):
            action = np.full(3, step % 2)
            mine, theirs = framed.step(action), plain.step(action)
            for a, b in zip(mine[:4], theirs[:4], strict=True):
                assert type(a) is type(b) and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert counter.count == 20


def test_spaces_records_cannot_describe_are_not_offered(serve) -> None:
    server = serve(DictTupleEnv)
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env)._record_frames is None
        env.reset(seed=0)
        env.step(env.action_space.sample())


def test_large_observations_keep_zero_copy_tensor_frames(serve) -> None:
    server = serve(lambda: gym.make_vec("CartPole-v1", num_envs=4))
    with rn.RemoteVectorEnv(server.address) as small:
        assert connection_of(small)._record_frames is not None

    class Frames(gym.Env):  # 128 KiB observations: over FRAME_MAX_OBSERVATION_BYTES
        observation_space = gym.spaces.Box(0, 255, (128, 256, 4), np.uint8)
        action_space = gym.spaces.Discrete(2)

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
            return np.zeros((128, 256, 4), np.uint8), {}

        def step(self, action: Any) -> Any:
            return np.full((128, 256, 4), action, np.uint8), 0.0, False, False, {}

    server = serve(Frames)
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env)._record_frames is None
        env.reset(seed=0)
        assert env.step(1)[0].min() == 1


def raw_session(address: str) -> tuple[zmq.Socket, dict[str, Any]]:
    """A raw DEALER that has shaken hands (asking for record frames) at ``address``, and the reply."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, 3000)
    socket.connect(address)
    hello = {"protocol": PROTOCOL_VERSION, "backend": "numpy", "socket_records": True}
    socket.send_multipart([msgpack.packb(["hello", 1, [], msgpack.packb(hello)])])
    kind, body = decode_reply(socket.recv_multipart())
    assert kind == "ok"
    return socket, body


def record(kind: int, request_id: int, payload: bytes) -> bytes:
    return struct.pack("<BB6xQ", RECORD_TAG, kind, request_id) + payload


@pytest.mark.parametrize(
    "frames, message",
    [
        ([record(1, 7, b"\x01" * 4)], "take 24"),  # an int64 action is 8 bytes, not 4
        ([record(9, 7, b"\x01" * 8)], "of kind 9"),
        ([record(1, 7, b"\x01" * 8), b"extra"], "announces 0 tensor frames, got 1"),
        ([record(1, 7, (5).to_bytes(8, "little"))], "Discrete"),  # outside the space: the env's check
    ],
)
def test_malformed_record_frames_get_error_replies_and_the_session_goes_on(serve, frames, message) -> None:
    server = serve("CartPole-v1")
    socket, hello = raw_session(server.address)
    try:
        assert hello["socket_records"] is True
        socket.send_multipart([msgpack.packb(["reset", 2, [], msgpack.packb({"seed": 0})])])
        assert decode_reply(socket.recv_multipart())[0] == "ok"
        socket.send_multipart(frames)
        reply = socket.recv_multipart()
        kind, body = decode_reply(reply)
        assert kind == "error" and message in body["message"], body
        assert msgpack.unpackb(reply[0])[1] == 7  # the refusal reaches the waiting request
        socket.send_multipart([record(1, 8, (1).to_bytes(8, "little"))])
        reply = socket.recv_multipart()
        assert len(reply) == 1 and reply[0][0] == RECORD_TAG  # the session goes on, in records
        assert struct.unpack_from("<BB6xQd??", reply[0])[2:] == (8, 1.0, False, False)
    finally:
        socket.close()
    still_serves(server.address)


def test_a_record_to_a_session_without_records_is_refused(serve) -> None:
    server = serve(DictTupleEnv)
    socket, hello = raw_session(server.address)
    try:
        assert hello["socket_records"] is False
        socket.send_multipart([record(2, 4, b"\x00" * 8)])
        kind, body = decode_reply(socket.recv_multipart())
        assert kind == "error" and body["code"] == "protocol" and "encodes every step" in body["message"]
    finally:
        socket.close()
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        env.step(env.action_space.sample())


def test_invalid_actions_are_refused_the_same_way(serve) -> None:
    server = serve("CartPole-v1")
    with rn.RemoteEnv(server.address, validate_actions=False) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match="Discrete"):
            env.step(7)  # an int64 record, outside the space: the server refuses it
        with pytest.raises(rlmesh.InvalidActionError):
            env.step(2**63)  # no int64 holds it: encoded, and the server refuses it as before
        assert env.step(1)[1] == 1.0
