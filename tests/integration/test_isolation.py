"""Sessions are isolated: no peer can stall, crash or bloat a server, or take its address."""

from __future__ import annotations

import functools
import logging
import os
import socket
import statistics
import threading
import time

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq
from envs import ImageEnv, SleepyEnv, ThreadReportingEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh import protocol as p
from rlmesh import stream
from rlmesh.connection import Connection
from rlmesh.env_runner import EnvRunner


def still_serves(address: str) -> None:
    """A fresh client can reset and step: the server survived."""
    with rn.RemoteEnv(address) as env:
        env.reset(seed=0)
        env.step(env.action_space.sample())


def raw_socket(address: str, **options: int) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5000)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(address)
    return sock


def request(op: str, request_id: int, body: object, descriptors: list | None = None) -> bytes:
    return msgpack.packb([op, request_id, descriptors or [], msgpack.packb(body)])


def error_reply(frames: list[bytes]) -> dict:
    kind, _, _, body = msgpack.unpackb(frames[0])
    assert kind == "error"
    return msgpack.unpackb(body)


HELLO = {"protocol": p.PROTOCOL_VERSION}


def test_non_reading_flooder_is_dropped_while_others_step_and_connect(serve, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="rlmesh.server")
    server = serve(ImageEnv, send_timeout_seconds=1.0)  # 28 KB observations fill pipes fast
    good = rn.RemoteEnv(server.address)
    good.reset(seed=0)
    flooder = raw_socket(server.address, RCVHWM=1, RCVBUF=4096, SNDTIMEO=0)
    flooder.send(request("hello", 1, HELLO))
    sent = 0
    for request_id in range(2, 3000):
        try:
            flooder.send(request("reset", request_id, {"seed": None, "options": None}))
            sent += 1
        except zmq.Again:
            time.sleep(0.001)
    assert sent > 500
    for _ in range(50):  # the other client keeps stepping at full speed
        good.step(0)
    with rn.RemoteEnv(server.address) as newcomer:  # and a new client gets in
        newcomer.reset(seed=1)
        newcomer.step(1)
    deadline = time.monotonic() + 15
    while "not read its replies" not in caplog.text:
        assert time.monotonic() < deadline, "the flooder was never dropped"
        good.step(0)
        time.sleep(0.05)
    flooder.close()
    good.step(0)
    good.close()
    still_serves(server.address)


def test_a_slow_session_does_not_slow_the_others(serve) -> None:
    server = serve(SleepyEnv)
    slow, fast = rn.RemoteEnv(server.address), rn.RemoteEnv(server.address)
    slow.reset(seed=0)
    fast.reset(seed=0)
    done = threading.Event()

    def crawl() -> None:
        for _ in range(4):
            slow.step(1)  # half a second each
        done.set()

    crawler = threading.Thread(target=crawl)
    crawler.start()
    latencies = []
    while not done.is_set():
        started = time.perf_counter()
        fast.step(0)
        latencies.append(time.perf_counter() - started)
    crawler.join()
    # A server that served sessions one after another would put the fast client behind
    # the 0.5 s steps; a generous bound far below that shows they ran side by side.
    assert len(latencies) >= 20 and statistics.median(latencies) < 0.1
    slow.close()
    fast.close()


def test_session_cap_gives_a_clear_server_full_error(serve) -> None:
    server = serve("CartPole-v1", max_sessions=2)
    first, second = rn.RemoteEnv(server.address), rn.RemoteEnv(server.address)
    with pytest.raises(rlmesh.errors.ServerFullError, match=r"server full.*max_sessions=2") as caught:
        rn.RemoteEnv(server.address)
    assert isinstance(caught.value, ConnectionError)
    first.close()
    with rn.RemoteEnv(server.address) as third:
        third.reset(seed=0)
    second.reset(seed=0)
    second.close()


def test_bad_session_cap_names_the_value() -> None:
    with pytest.raises(ValueError, match="max_sessions must be a positive int, got 0"):
        rlmesh.ServeOptions(max_sessions=0)
    with pytest.raises(ValueError, match="isolation must be one of"):
        rlmesh.ServeOptions(isolation="fiber")


def test_a_live_unix_path_is_not_taken_over(serve, tmp_path) -> None:
    path = tmp_path / "env.sock"
    first = serve("CartPole-v1", f"unix://{path}")
    with pytest.raises(OSError, match="address in use"):
        rlmesh.EnvServer("CartPole-v1", f"unix://{path}")
    assert path.exists()
    still_serves(first.address)


def test_a_stale_unix_socket_file_is_replaced(serve, tmp_path) -> None:
    path = tmp_path / "env.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    server = serve("CartPole-v1", f"unix://{path}")
    still_serves(server.address)


def test_a_path_that_is_not_a_socket_is_refused(tmp_path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("keep me")
    with pytest.raises(OSError, match="not a socket"):
        rlmesh.EnvServer("CartPole-v1", f"unix://{path}")
    assert path.read_text() == "keep me"


def test_a_server_deletes_only_the_socket_file_it_created(tmp_path) -> None:
    path = tmp_path / "env.sock"
    first = rlmesh.EnvServer("CartPole-v1", f"unix://{path}").start()
    os.unlink(path)  # someone removed it; a second server now owns the path
    second = rlmesh.EnvServer("CartPole-v1", f"unix://{path}").start()
    try:
        first.shutdown()
        assert path.exists()
        still_serves(second.address)
    finally:
        second.shutdown()
    assert not path.exists()


@pytest.mark.parametrize(
    "frames",
    [
        [request("step", 2, None, [[5, [0, 2**64 - 1]]]), b""],
        [request("step", 2, None, [[5, [2**40, 0]]]), b""],
        [msgpack.packb(["step", 2, [], b"\x91" * 1000 + b"\xc0"])],  # a list nested 1000 deep
        [request("step", 2, None, [[5, [-1]]])],
    ],
)
def test_bad_shapes_and_deep_nesting_are_protocol_errors(serve, frames) -> None:
    server = serve("CartPole-v1")
    sock = raw_socket(server.address)
    try:
        sock.send(request("hello", 1, HELLO))
        sock.recv_multipart()
        sock.send_multipart(frames)
        body = error_reply(sock.recv_multipart())
        assert body["code"] == "protocol"
        sock.send(request("reset", 3, {"seed": 0, "options": None}))  # the session goes on
        kind, request_id, _, _ = msgpack.unpackb(sock.recv_multipart()[0])
        assert (kind, request_id) == ("ok", 3)
    finally:
        sock.close()
    still_serves(server.address)


def test_a_request_over_the_servers_limit_fails_locally_with_a_clear_error(serve) -> None:
    server = serve("CartPole-v1", max_message_bytes=1024)
    with rlmesh.RemoteEnv(server.address, validate_actions=False) as env:
        env.reset(seed=0)
        with pytest.raises(rlmesh.ProtocolError, match="max_message_bytes=1024"):
            env.step(np.zeros(4096, np.uint8))
        env.step(0)


def test_a_multi_frame_request_over_the_limit_gets_an_error_reply(serve) -> None:
    server = serve("CartPole-v1", max_message_bytes=4096)
    sock = raw_socket(server.address)
    try:
        descriptors = [[5, [3000]], [5, [3000]]]
        sock.send_multipart([request("step", 1, None, descriptors), bytes(3000), bytes(3000)])
        body = error_reply(sock.recv_multipart())
        assert body["code"] == "protocol" and "max_message_bytes=4096" in body["message"]
    finally:
        sock.close()
    still_serves(server.address)


def test_a_frame_libzmq_drops_makes_the_client_raise_within_seconds(serve) -> None:
    server = serve("CartPole-v1", max_message_bytes=1024)
    connection = Connection(server.address)  # no handshake: it does not know the limit
    try:
        started = time.monotonic()
        with pytest.raises(rlmesh.EndpointConnectionError, match="size limit"):
            connection.request(p.STEP, np.zeros(1 << 20, np.uint8), timeout=30)
        assert time.monotonic() - started < 15  # far below the request timeout
    finally:
        connection.close()
    still_serves(server.address)


class _MalformedReplyServer:
    """A hostile server: answers the handshake, then one reply with a bad shape, then well."""

    def __init__(self) -> None:
        self.contract = EnvRunner(gym.make("CartPole-v1")).contract.to_dict()
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        for count in range(4):
            if not self.socket.poll(10_000):
                break
            identity, header = self.socket.recv_multipart()[:2]
            kind, request_id, _, _ = msgpack.unpackb(header)
            if kind == "hello":
                body = {"protocol": p.PROTOCOL_VERSION, "contract": self.contract}
                self.socket.send_multipart([identity, request_ok(request_id, body)])
            elif count == 1:  # the first step: a shape no buffer could hold, plus a frame
                bad = msgpack.packb(["ok", request_id, [[10, [2**63, 2]]], msgpack.packb(None)])
                self.socket.send_multipart([identity, bad, b"\x00" * 8, b"trailing"])
            else:
                reply = [np.zeros(4).tolist(), 1.0, False, False, {}]
                self.socket.send_multipart([identity, request_ok(request_id, reply)])
        self.socket.close()


def request_ok(request_id: int, body: object) -> bytes:
    return msgpack.packb(["ok", request_id, [], msgpack.packb(body)])


def test_a_malformed_reply_is_a_protocol_error_and_the_next_call_works() -> None:
    hostile = _MalformedReplyServer()
    with rn.RemoteEnv(hostile.address, validate_actions=False) as env:
        with pytest.raises(rlmesh.ProtocolError, match="max_message_bytes"):
            env.step(0)
        observation, reward, *_ = env.step(0)
        assert reward == 1.0
    hostile.thread.join(10)


def test_thirty_two_clients_match_local_cartpole(serve_process) -> None:
    server = serve_process("CartPole-v1")
    failures: list[str] = []

    def client(index: int) -> None:
        try:
            rng = np.random.default_rng(index)
            local = gym.make("CartPole-v1")
            with rn.RemoteEnv(server.address) as remote:
                expected, _ = local.reset(seed=index)
                observed, _ = remote.reset(seed=index)
                for _ in range(40):
                    np.testing.assert_array_equal(observed, expected)
                    action = int(rng.integers(2))
                    expected, r1, term1, trunc1, _ = local.step(action)
                    observed, r2, term2, trunc2, _ = remote.step(action)
                    assert (r1, term1, trunc1) == (r2, term2, trunc2)
                    if term1 or trunc1:
                        expected, _ = local.reset()
                        observed, _ = remote.reset()
                np.testing.assert_array_equal(observed, expected)
            local.close()
        except Exception as error:  # reported below, from the test's own thread
            failures.append(f"client {index}: {error!r}")

    threads = [threading.Thread(target=client, args=(index,)) for index in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures


def test_process_isolation_ends_only_the_crashed_session(serve) -> None:
    from envs import make_exiting_env

    server = serve(make_exiting_env, isolation="process")
    # Each session's process starts on demand: allow for a slow start on a busy machine.
    crasher, survivor = (rn.RemoteEnv(server.address, connect_timeout_seconds=120) for _ in range(2))
    crasher.reset(seed=0)
    survivor.reset(seed=0)
    pids = {crasher.step(0)[4]["pid"], survivor.step(0)[4]["pid"]}
    assert len(pids) == 2 and os.getpid() not in pids  # each session in its own process
    with pytest.raises(rlmesh.RemoteEnvError, match="exited with code 1"):
        crasher.step(1)  # os._exit(1) inside the env
    with pytest.raises(ConnectionError, match="no session"):
        crasher.step(0)
    crasher.close()
    survivor.step(0)
    survivor.close()
    with rn.RemoteEnv(server.address, connect_timeout_seconds=120) as newcomer:  # still opens sessions
        newcomer.reset(seed=0)
        assert newcomer.step(0)[4]["pid"] not in pids


def test_process_isolation_needs_a_picklable_factory() -> None:
    with pytest.raises(ValueError, match="picklable env factory"):
        rlmesh.EnvServer(lambda: gym.make("CartPole-v1"), options=rlmesh.ServeOptions(isolation="process"))
    with pytest.raises(ValueError, match="needs an env factory"):
        rlmesh.EnvServer(gym.make("CartPole-v1"), options=rlmesh.ServeOptions(isolation="process"))


def test_cli_serves_with_process_isolation(serve_process) -> None:
    server = serve_process("CartPole-v1", "--isolation", "process", "--max-sessions", "4")
    local = gym.make("CartPole-v1")
    with rn.RemoteEnv(server.address, connect_timeout_seconds=120) as remote:
        np.testing.assert_array_equal(remote.reset(seed=3)[0], local.reset(seed=3)[0])
        np.testing.assert_array_equal(remote.step(1)[0], local.step(1)[0])
    local.close()


def test_a_failed_handshake_ends_at_the_connect_timeout_without_a_close_round_trip() -> None:
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # accepts connections, never answers
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(ConnectionError, match="within 0.3s; check that a server runs at that address"):
            rn.RemoteEnv(f"tcp://127.0.0.1:{port}", connect_timeout_seconds=0.3)
        ops = []
        while silent.poll(200):
            ops.append(msgpack.unpackb(silent.recv_multipart()[1])[0])
        assert ops == ["hello"]  # nothing more to wait for: there was no session to close
    finally:
        silent.close()


def test_a_request_just_over_the_limit_gets_a_protocol_error_for_that_request(serve) -> None:
    server = serve("CartPole-v1", max_message_bytes=1 << 20)
    connection = Connection(server.address)  # no handshake: the server has to refuse it
    try:
        with pytest.raises(rlmesh.ProtocolError, match="exceeds max_message_bytes=1048576"):
            connection.request(p.STEP, np.zeros((1 << 20) + 1, np.uint8), timeout=30)
    finally:
        connection.close()
    still_serves(server.address)


def test_a_lone_slow_session_moves_off_the_front_before_others_arrive(serve) -> None:
    server = serve(SleepyEnv)
    slow = rn.RemoteEnv(server.address)
    slow.reset(seed=0)
    slow.step(1)  # served on the front while alone; this slow step hands it to a thread
    done = threading.Event()

    def crawl() -> None:
        for _ in range(3):
            slow.step(1)
        done.set()

    crawler = threading.Thread(target=crawl)
    crawler.start()
    latencies = []
    with rn.RemoteEnv(server.address) as fast:
        fast.reset(seed=0)
        while not done.is_set():
            started = time.perf_counter()
            fast.step(0)
            latencies.append(time.perf_counter() - started)
    crawler.join()
    assert len(latencies) >= 10 and statistics.median(latencies) < 0.1
    slow.close()


def test_clients_spin_only_while_replies_come_within_the_spin_window(serve_process, monkeypatch) -> None:
    monkeypatch.setenv(stream.ENVIRONMENT_SWITCH, "0")  # ZeroMQ replies (a stream's need no spin)
    server = serve_process("envs:SleepyEnv")
    with rn.RemoteEnv(server.address) as env:  # the default busy-poll
        connection = env._group.members[0].connection
        env.reset(seed=0)
        for _ in range(20):
            env.step(0)  # answered at once
        fast = connection._round_trip
        assert 0 < fast < 0.05
        for _ in range(3):
            env.step(1)  # half a second each: spinning would only burn CPU
        assert connection._round_trip > connection.busy_poll_seconds
        cpu = time.process_time()
        connection._spin()  # returns at once, though no reply is waiting
        assert time.process_time() - cpu < connection.busy_poll_seconds
        for _ in range(40):
            env.step(0)  # fast again: the average follows, and spinning resumes once it is short
        assert connection._round_trip < 0.05


@pytest.mark.parametrize("streams", ["off", "declined"])
def test_a_session_left_alone_moves_back_to_the_front_thread_with_its_env(serve, monkeypatch, streams) -> None:
    """Sessions move to worker threads when a second one opens, and back when it has gone.

    Front-thread serving is for ZeroMQ sessions: streams turned off everywhere, or offered by
    the server and declined by the clients.
    """
    if streams == "off":
        monkeypatch.setenv(stream.ENVIRONMENT_SWITCH, "0")
    server = serve(ThreadReportingEnv)
    connect = functools.partial(rn.RemoteEnv, tcp_stream=False)
    steps = 0

    def step(env: rn.RemoteEnv) -> str:
        nonlocal steps
        observation, _, _, _, info = env.step(0)
        steps += 1
        assert observation[0] == steps, "the session's env was replaced or reset on the way"
        return info["thread"]

    with connect(server.address) as first:
        first.reset(seed=0)
        front = step(first)
        assert front.startswith("rlmesh-server")
        with connect(server.address) as second:
            second.reset(seed=0)
            assert step(first) == "rlmesh-session"
            second.step(0)
        deadline = time.monotonic() + 5.0
        while step(first) != front:
            assert time.monotonic() < deadline, "the lone session stayed on its worker thread"
            time.sleep(0.01)
        with connect(server.address) as third:  # and out again for a newcomer
            third.reset(seed=0)
            assert step(first) == "rlmesh-session"
            assert third.step(0)[0][0] == 1
        step(first)
    still_serves(server.address)


def test_a_session_that_declined_shared_memory_is_handed_back_when_left_alone(serve, tmp_path) -> None:
    """On a unix server offering shared memory, a ZeroMQ-only session opened on a worker thread
    (another session was there) goes back to the front once alone, and never stalls on the way."""
    server = serve(ThreadReportingEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as first:
        first.reset(seed=0)
        with rn.RemoteEnv(server.address, shared_memory=False, request_timeout_seconds=10) as second:
            second.reset(seed=0)
            assert second.step(0)[4]["thread"] == "rlmesh-session"
            first.close()
            deadline = time.monotonic() + 5.0
            while second.step(0)[4]["thread"] == "rlmesh-session":
                assert time.monotonic() < deadline, "the lone session stayed on its worker thread"
                time.sleep(0.01)
    still_serves(server.address)


def test_a_session_with_slow_steps_stays_on_its_worker_thread_when_left_alone(serve, monkeypatch) -> None:
    monkeypatch.setenv(stream.ENVIRONMENT_SWITCH, "0")  # front-thread serving is for ZeroMQ sessions
    server = serve(ThreadReportingEnv)
    with rn.RemoteEnv(server.address) as slow:
        slow.reset(seed=0)
        with rn.RemoteEnv(server.address) as other:
            other.reset(seed=0)
            assert slow.step(1)[4]["thread"] == "rlmesh-session"  # 0.1 s: too slow for the front
        time.sleep(0.3)  # several sweeps: a lone session would have been handed back by now
        assert slow.step(0)[4]["thread"] == "rlmesh-session"
        with rn.RemoteEnv(server.address) as newcomer:  # the front stays free for handshakes
            assert newcomer.reset(seed=0)[1]["thread"] == "rlmesh-session"
