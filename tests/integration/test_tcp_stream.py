"""The tcp step stream: step records over a plain TCP connection beside ZeroMQ (rlmesh.stream)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import threading
import time

import gymnasium as gym
import numpy as np
import pytest
from envs import CrashingEnv, SleepyEnv, ThreadReportingEnv
from test_errors import still_serves
from test_step_records import connection_of

import rlmesh
import rlmesh.jax as rj
import rlmesh.numpy as rn
from rlmesh import protocol as p
from rlmesh import stream
from rlmesh.connection import Connection
from rlmesh.specs import EnvContract


@pytest.fixture(autouse=True)
def _stream_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(stream.ENVIRONMENT_SWITCH, raising=False)


def test_cartpole_steps_over_the_stream_equal_local_cartpole(serve) -> None:
    server = serve("CartPole-v1")
    local = gym.make("CartPole-v1")
    actions = [int(a) for a in np.random.default_rng(1).integers(0, 2, 400)]
    with rn.RemoteEnv(server.address) as remote:
        assert connection_of(remote).uses_tcp_stream
        observation, _ = remote.reset(seed=5)
        np.testing.assert_array_equal(observation, local.reset(seed=5)[0])
        for action in actions:
            got, expected = remote.step(action), local.step(action)
            np.testing.assert_array_equal(got[0], expected[0])
            assert got[1:4] == expected[1:4] and type(got[1]) is float and type(got[2]) is bool
            if got[2] or got[3]:
                np.testing.assert_array_equal(remote.reset()[0], local.reset()[0])
        assert connection_of(remote).uses_tcp_stream  # it stayed up all along


def test_vector_and_jax_clients_step_over_the_stream(serve) -> None:
    server = serve(gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync"))
    local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    with rj.RemoteVectorEnv(server.address) as remote:
        assert connection_of(remote).uses_tcp_stream
        np.testing.assert_array_equal(np.asarray(remote.reset(seed=2)[0]), local.reset(seed=2)[0])
        for t in range(120):  # across autoresets
            actions = np.array([(t + lane) % 2 for lane in range(3)])
            got, expected = remote.step(actions), local.step(actions)
            for value, reference in zip(got[:4], expected[:4], strict=True):
                np.testing.assert_array_equal(np.asarray(value), reference)


def test_each_side_can_opt_out(serve, monkeypatch) -> None:
    offering, refusing = serve("CartPole-v1"), serve("CartPole-v1", tcp_stream=False)
    with rn.RemoteEnv(offering.address, tcp_stream=False) as env:
        assert not connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        env.step(1)
    with rn.RemoteEnv(refusing.address) as env:
        assert not connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        env.step(1)
    monkeypatch.setenv(stream.ENVIRONMENT_SWITCH, "0")
    with rn.RemoteEnv(offering.address) as env:
        assert not connection_of(env).uses_tcp_stream


def test_process_isolated_sessions_keep_zeromq(serve) -> None:
    server = serve("CartPole-v1", isolation="process")
    with rn.RemoteEnv(server.address, connect_timeout_seconds=120) as env:
        assert not connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        env.step(0)


def test_replies_no_record_holds_and_env_errors_come_over_the_stream_too(serve) -> None:
    reporting, crashing = serve(ThreadReportingEnv), serve(CrashingEnv)
    with rn.RemoteEnv(reporting.address) as env:
        assert connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        for t in range(1, 6):
            observation, _, _, _, info = env.step(0)  # a non-empty info: an encoded reply
            assert observation[0] == t and info["thread"] == "rlmesh-session"  # its own worker thread
        assert connection_of(env).uses_tcp_stream
    with rn.RemoteEnv(crashing.address) as env:
        env.reset(seed=0)
        env.step(0)
        env.step(0)
        with pytest.raises(rlmesh.RemoteEnvError, match="boom at step 3"):
            env.step(0)
        assert env.step(0)[1] == 1.0  # the session goes on, still over the stream
        assert connection_of(env).uses_tcp_stream


def _hello(address: str) -> tuple[Connection, dict]:
    connection = Connection(address)
    fields = {"protocol": p.PROTOCOL_VERSION, "backend": "numpy", **connection.hello_fields()}
    return connection, connection.request(p.HELLO, fields, timeout=10, connecting=True)


def test_a_connection_without_the_token_is_closed_and_the_client_still_attaches(serve) -> None:
    server = serve("CartPole-v1")
    connection, hello = _hello(server.address)
    try:
        offer = hello["tcp_stream"]
        for wrong in (b"x" * stream.TOKEN_BYTES, b""):
            with socket.create_connection(("127.0.0.1", offer["port"]), timeout=10) as intruder:
                intruder.sendall(wrong)
                if not wrong:
                    intruder.shutdown(socket.SHUT_WR)
                assert intruder.recv(64) == b""  # closed by the server, nothing answered
        assert connection.use_record_frames(True, EnvContract.from_dict(hello["contract"]))
        assert connection.attach_stream(offer)
        connection.request(p.RESET, {"seed": 0, "options": None}, timeout=10)
        observation = connection.request(p.STEP, 1, timeout=10)[0]
        assert connection.uses_tcp_stream and observation.shape == (4,)
    finally:
        connection.close()
    still_serves(server.address)


def test_a_stream_client_that_stops_reading_is_dropped_and_others_go_on(serve, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rlmesh.server")
    server = serve(SleepyEnv, send_timeout_seconds=0.5)  # action 0: at once, never done
    connection, hello = _hello(server.address)
    offer = hello["tcp_stream"]
    flooder = socket.create_connection(("127.0.0.1", offer["port"]), timeout=10)
    flooder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    flooder.sendall(offer["token"])
    connection.use_record_frames(True, EnvContract.from_dict(hello["contract"]))
    connection.request(p.RESET, {"seed": 0, "options": None}, timeout=10)
    records = connection._record_frames
    assert records is not None
    unsent = b""
    try:
        with rn.RemoteEnv(server.address) as other:
            other.reset(seed=0)
            deadline = time.monotonic() + 30
            while "did not read a step reply" not in caplog.text:
                assert time.monotonic() < deadline, "the non-reading client was never dropped"
                # Requests, as many as the kernel takes, and never a reply read.
                unsent = unsent or records.request(np.int64(0), True, 99) * 256
                try:
                    unsent = unsent[flooder.send(unsent, socket.MSG_DONTWAIT) :]
                except BlockingIOError:
                    pass
                except OSError:
                    unsent = b"x"  # the server closed the stream: it is about to log why
                assert other.step(0)[1] == 1.0  # meanwhile, another session steps normally
        with pytest.raises(ConnectionError, match="no session"):
            connection.request(p.RESET, {"seed": 0, "options": None}, timeout=10)
    finally:
        flooder.close()
        connection.close()
    still_serves(server.address)


def test_a_session_the_server_ends_answers_no_session_instead_of_hanging(serve) -> None:
    server = serve("CartPole-v1", idle_timeout_seconds=0.3)
    with rn.RemoteEnv(server.address, request_timeout_seconds=10) as env:
        assert connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        env.step(0)
        time.sleep(1.5)  # reaped as idle: its worker closes the stream
        with pytest.raises(ConnectionError, match="no session"):
            env.step(0)


def test_a_killed_server_is_noticed_while_a_step_waits(serve_process) -> None:
    server = serve_process("envs:SleepyEnv")
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env).uses_tcp_stream
        env.reset(seed=0)
        env.step(0)
        threading.Timer(0.2, os.kill, (server.process.pid, signal.SIGKILL)).start()
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            env.step(1)  # the server dies during this half-second step
        assert time.monotonic() - started < 10


def test_a_reset_connection_reads_as_a_closed_stream() -> None:
    """A server that dies with unread bytes resets the connection (no FIN): that is "closed" too."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        client = stream.ClientStream(socket.create_connection(listener.getsockname()), reply_bytes=48)
        server_side, _ = listener.accept()
        client.send(b"unread by the server")
        time.sleep(0.1)
        server_side.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server_side.close()  # unread data and linger 0: the kernel sends RST
        time.sleep(0.1)
        assert client.receive(1 << 20, 8) is None
        client.close()
    finally:
        listener.close()
