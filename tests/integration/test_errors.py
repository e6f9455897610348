"""Every bad input gets a clear error, and the server keeps serving that client and others."""

from __future__ import annotations

import time

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq
from envs import CrashingEnv, DictTupleEnv, UnencodableInfoEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh.protocol import PROTOCOL_VERSION

# Every test here runs over ZeroMQ only and over the shared-memory fast path.
pytestmark = pytest.mark.usefixtures("data_plane")


def still_serves(address: str) -> None:
    """A fresh client can reset and step: the server survived."""
    with rn.RemoteEnv(address) as env:
        env.reset(seed=0)
        env.step(env.action_space.sample())


@pytest.mark.parametrize(
    "env_id, action, message",
    [
        ("CartPole-v1", 2, r"action: expected an integer in \[0, 2\) \(Discrete\(2, start=0\)\), found 2"),
        ("CartPole-v1", 0.5, r"action: expected an integer in \[0, 2\).*found float 0.5"),
        ("CartPole-v1", "left", r"action: expected an integer.*found str 'left'"),
        (
            "Pendulum-v1",
            np.array([5.0], np.float32),
            r"\(Box, float32\).*out of bounds: \[5\.\]",
        ),
        ("Pendulum-v1", np.zeros(3, np.float32), r"expected an array of shape \(1,\).*found float32 .* shape \(3,\)"),
        ("Pendulum-v1", np.zeros((1, 1), np.float64), r"shape \(1,\).*found float64 .* shape \(1, 1\)"),
    ],
)
def test_invalid_actions_name_action_and_space_and_the_session_goes_on(serve, env_id, action, message) -> None:
    server = serve(env_id)
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match=message) as caught:
            env.step(action)
        assert isinstance(caught.value, ValueError)
        env.step(env.action_space.sample())  # same client, same session, still fine
    still_serves(server.address)


def test_invalid_nested_action_names_the_leaf(serve) -> None:
    server = serve(DictTupleEnv)
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match=r"action\[.jump.\]: expected an integer.*found 7"):
            env.step({"move": np.zeros(2, np.float32), "jump": 7})
        with pytest.raises(rlmesh.InvalidActionError, match=r"keys \['jump', 'move'\]"):
            env.step({"move": np.zeros(2, np.float32)})
        env.step({"move": np.zeros(2, np.float32), "jump": 1})


def test_invalid_vector_action_names_the_lane(serve) -> None:
    server = serve(lambda: gym.make_vec("CartPole-v1", num_envs=3))
    with rn.RemoteVectorEnv(server.address) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match=r"action for lane 1: expected an integer in \[0, 2\)"):
            env.step(np.array([0, 5, 1]))
        with pytest.raises(rlmesh.InvalidActionError, match="expected 3 actions"):
            env.step([0, 1])
        env.step(np.array([0, 1, 1]))


def test_env_exception_carries_the_remote_traceback(serve) -> None:
    server = serve(CrashingEnv)
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        env.step(0)
        env.step(0)
        with pytest.raises(rlmesh.RemoteEnvError, match="boom at step 3") as caught:
            env.step(0)
        error = caught.value
        assert isinstance(error, RuntimeError)
        assert error.remote_type == "builtins.RuntimeError"
        assert "envs.py" in error.remote_traceback and "raise RuntimeError" in error.remote_traceback
        assert "Remote traceback" in str(error)
        env.step(0)  # the env itself goes on
        env.reset(seed=1)


def test_unencodable_info_values_are_sent_as_repr(serve) -> None:
    server = serve(UnencodableInfoEnv)
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        _, _, _, _, info = env.step(0)
        assert info["ok"] == 1 and info["obj"].startswith("<object object")


def test_step_before_reset_is_the_envs_own_error(serve) -> None:
    server = serve("CartPole-v1")
    with rn.RemoteEnv(server.address) as env, pytest.raises(rlmesh.RemoteEnvError, match="ResetNeeded|reset"):
        env.step(0)


def test_bad_seed_and_options_are_rejected(serve) -> None:
    server = serve("CartPole-v1")
    with rn.RemoteEnv(server.address) as env:
        with pytest.raises(ValueError, match="seed must be a non-negative int"):
            env.reset(seed=-3)
        with pytest.raises(ValueError, match="options must be a dict"):
            env.reset(options=[1])  # type: ignore[arg-type]
        env.reset(seed=3)


def test_unencodable_action_fails_locally(serve) -> None:
    server = serve("CartPole-v1")
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        with pytest.raises(TypeError, match="cannot encode a value of type object"):
            env.step(object())
        with pytest.raises(ValueError, match="dtype 'str32' cannot cross the wire"):
            env.step(np.array(["a"]))
        env.step(1)


def raw_request(address: str, frames: list[bytes], timeout_ms: int = 3000) -> list[bytes]:
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.RCVTIMEO, timeout_ms)
    socket.connect(address)
    try:
        socket.send_multipart(frames)
        return socket.recv_multipart()
    finally:
        socket.close()


def decode_reply(frames: list[bytes]) -> tuple[str, dict]:
    kind, _, _, body = msgpack.unpackb(frames[0])
    return kind, msgpack.unpackb(body)


@pytest.mark.parametrize(
    "frames, message",
    [
        ([b"not msgpack \xc1"], "malformed message header"),
        ([msgpack.packb(["step", 1, [[10, [4]]], msgpack.packb(None)]), b"xx"], "does not match"),
        ([msgpack.packb(["step", 1, [], msgpack.packb(None)]), b"extra"], "announces 0 tensor frames, got 1"),
        ([msgpack.packb(["step", 1, [[10, [4]]], msgpack.packb(None)])], "announces 1 tensor"),
        ([msgpack.packb(["warp", 1, [], msgpack.packb(None)])], "unknown op 'warp'"),
        ([msgpack.packb(["step", 1, [], msgpack.packb(0)])], "no session"),
        (
            [msgpack.packb(["hello", 1, [], msgpack.packb({"protocol": 999})])],
            f"client speaks 999, server speaks {PROTOCOL_VERSION}",
        ),
    ],
)
def test_malformed_frames_from_a_raw_socket_get_error_replies(serve, frames, message) -> None:
    server = serve("CartPole-v1")
    kind, body = decode_reply(raw_request(server.address, frames))
    assert kind == "error" and message in body["message"]
    still_serves(server.address)


def test_oversized_request_is_refused_and_server_survives(serve) -> None:
    server = serve("CartPole-v1", max_message_bytes=1024)
    big = np.zeros(1 << 20, np.uint8)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(server.address)
    socket.send_multipart([msgpack.packb(["step", 1, [[5, [big.size]]], msgpack.packb(None)]), big.tobytes()])
    socket.close()  # ZeroMQ drops the peer that sent an oversized message; nothing to read
    still_serves(server.address)


def test_protocol_version_mismatch_names_both_versions(serve) -> None:
    server = serve("CartPole-v1")
    kind, body = decode_reply(
        raw_request(server.address, [msgpack.packb(["hello", 1, [], msgpack.packb({"protocol": 0})])])
    )
    assert kind == "error" and body["code"] == "version" and "client speaks 0" in body["message"]


def test_connecting_to_nothing_fails_within_the_connect_timeout() -> None:
    with pytest.raises(ConnectionError, match=r"could not connect to tcp://127.0.0.1:1 within 0.5s") as caught:
        rn.RemoteEnv("tcp://127.0.0.1:1", connect_timeout_seconds=0.5)
    assert isinstance(caught.value, rlmesh.EndpointConnectionError)


def test_wrong_arity_names_the_right_class(serve) -> None:
    vector = serve(lambda: gym.make_vec("CartPole-v1", num_envs=2))
    single = serve("CartPole-v1")
    with pytest.raises(ValueError, match="connect with RemoteVectorEnv"):
        rn.RemoteEnv(vector.address)
    with pytest.raises(ValueError, match="connect with RemoteEnv"):
        rn.RemoteVectorEnv(single.address)
    still_serves(single.address)


def test_killed_server_mid_episode_makes_the_next_call_raise(serve_process) -> None:
    server = serve_process("CartPole-v1")
    env = rn.RemoteEnv(server.address)  # no request timeout at all
    env.reset(seed=0)
    env.step(0)
    server.kill()
    with pytest.raises(ConnectionError, match="server stopped or crashed"):
        env.step(0)
    env.close()


def test_killed_server_while_waiting_for_a_slow_reply_raises(serve_process) -> None:
    server = serve_process("envs:make_image_env")
    env = rn.RemoteEnv(server.address)
    env.reset(seed=0)
    server.process.kill()
    with pytest.raises(ConnectionError):
        for _ in range(10):
            env.step(0)
    env.close()


def test_request_timeout_raises_timeout_error(serve) -> None:
    class SlowEnv(CrashingEnv):
        def step(self, action):
            time.sleep(0.5)
            return super().step(action)

    server = serve(SlowEnv)
    with rn.RemoteEnv(server.address, request_timeout_seconds=0.1) as env:
        env.request_timeout_seconds = None
        env.reset(seed=0)
        env.request_timeout_seconds = 0.1
        with pytest.raises(TimeoutError, match="no reply to 'step'"):
            env.step(0)
        env.request_timeout_seconds = 5.0
        time.sleep(0.5)
        env.step(0)  # the late reply to the abandoned request is skipped


def test_single_env_object_is_busy_for_a_second_client(serve) -> None:
    local = gym.make("CartPole-v1")
    server = serve(local)
    first = rn.RemoteEnv(server.address)
    first.reset(seed=0)
    with pytest.raises(rlmesh.EnvBusyError, match="busy") as caught:
        rn.RemoteEnv(server.address)
    assert isinstance(caught.value, ConnectionError)
    first.close()
    with rn.RemoteEnv(server.address) as second:  # free again once the first detached
        second.reset(seed=1)


def test_concurrent_clients_on_a_factory_do_not_share_state(serve) -> None:
    server = serve("CartPole-v1")
    a, b = rn.RemoteEnv(server.address), rn.RemoteEnv(server.address)
    obs_a, _ = a.reset(seed=1)
    obs_b, _ = b.reset(seed=2)
    local_a, local_b = gym.make("CartPole-v1"), gym.make("CartPole-v1")
    np.testing.assert_array_equal(obs_a, local_a.reset(seed=1)[0])
    np.testing.assert_array_equal(obs_b, local_b.reset(seed=2)[0])
    for t in range(30):
        np.testing.assert_array_equal(a.step(t % 2)[0], local_a.step(t % 2)[0])
        np.testing.assert_array_equal(b.step((t + 1) % 2)[0], local_b.step((t + 1) % 2)[0])
    a.close()
    b.close()
