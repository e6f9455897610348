"""Serving policy: no insecure bind by accident, shutdown needs a session, tracebacks where allowed.

No test here sends traffic to a non-loopback address: refusals happen before binding, and the
opt-out is checked without binding.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import msgpack
import pytest
import zmq
from envs import CrashingEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh import EnvServer
from rlmesh.codec import encode_message
from rlmesh.security import EndpointSecurity, generate_keypair, is_local_endpoint


def crash(env: rn.RemoteEnv) -> rlmesh.RemoteEnvError:
    env.reset(seed=0)
    env.step(0)
    env.step(0)
    with pytest.raises(rlmesh.RemoteEnvError, match="RuntimeError: boom at step 3") as caught:
        env.step(0)
    return caught.value


# -- insecure binds ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "where",
    [
        {"address": "tcp://0.0.0.0:0"},
        {"address": "0.0.0.0:0"},
        {"address": "tcp://*:0"},
        {"host": "0.0.0.0", "port": 0},
        {"address": "tcp://[::]:0"},
    ],
)
def test_non_loopback_bind_without_curve_is_refused_before_anything_is_made(where) -> None:
    made = []

    def factory():
        made.append(1)
        import gymnasium

        return gymnasium.make("CartPole-v1")

    with pytest.raises(ValueError, match=r"without authentication.*CURVE.*allow_insecure=True.*--allow-insecure"):
        EnvServer(factory, **where)
    assert made == []  # refused before the env was made or anything was bound


def test_rlmesh_serve_refuses_an_insecure_non_loopback_address() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--address", "tcp://0.0.0.0:0", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--allow-insecure" in done.stderr and "CURVE" in done.stderr


def test_allow_insecure_opts_out_with_a_warning(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="rlmesh.security"):
        security = EndpointSecurity.for_endpoint("tcp://0.0.0.0:5555", allow_insecure=True)
    assert not security.curve
    assert "without authentication or encryption" in caplog.text
    assert security.send_tracebacks is False  # not a local endpoint


def test_curve_settings_allow_any_address(tmp_path) -> None:
    _, secret = generate_keypair(tmp_path, "server")
    public, _ = generate_keypair(tmp_path / "clients", "client")
    security = EndpointSecurity.for_endpoint(
        "tcp://0.0.0.0:5555", curve_secret_key=secret, curve_authorized_keys=[public]
    )
    assert security.curve and security.send_tracebacks is False
    assert EndpointSecurity.for_endpoint(
        "tcp://0.0.0.0:5555", allow_insecure=True, send_tracebacks=True
    ).send_tracebacks


@pytest.mark.parametrize(
    "endpoint, local",
    [
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.3.2.1:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("ipc:///tmp/env.sock", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://example.org:5555", False),
        ("tcp://192.0.2.7:5555", False),
        ("tcp://0.0.0.0;127.0.0.1:5555", False),
    ],
)
def test_local_endpoints(endpoint, local) -> None:
    assert is_local_endpoint(endpoint) is local


def test_loopback_and_unix_serve_without_options(serve, tmp_path) -> None:
    for address in ("tcp://127.0.0.1:0", f"unix://{tmp_path}/env.sock"):
        server = serve("CartPole-v1", address)
        with rn.RemoteEnv(server.address) as env:
            env.reset(seed=0)
            env.step(0)


# -- remote shutdown --------------------------------------------------------------------------


def test_shutdown_from_a_peer_without_a_session_is_refused_and_the_server_keeps_serving(serve) -> None:
    server = serve("CartPole-v1", allow_remote_shutdown=True)
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(server.address)
        socket.send_multipart(encode_message("shutdown", 7, {"reason": "no session"}))
        assert socket.poll(10_000)
        header = msgpack.unpackb(socket.recv())
        assert "remote shutdown needs a session" in repr(header)
    finally:
        socket.close()
    assert not server.wait(0.3)
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        env.step(0)
    assert rn.RemoteEnv(server.address).shutdown("with a session") is True
    assert server.wait(10)


# -- tracebacks -------------------------------------------------------------------------------


def test_loopback_and_unix_send_tracebacks_by_default(serve, tmp_path) -> None:
    for address in ("tcp://127.0.0.1:0", f"unix://{tmp_path}/crash.sock"):
        server = serve(CrashingEnv, address)
        with rn.RemoteEnv(server.address) as env:
            error = crash(env)
        assert "Traceback" in error.remote_traceback and "boom at step 3" in error.remote_traceback


def test_send_tracebacks_false_sends_type_and_message_only(serve) -> None:
    server = serve(CrashingEnv, send_tracebacks=False)
    with rn.RemoteEnv(server.address) as env:
        error = crash(env)
        assert error.remote_traceback == ""
        assert error.remote_type == "builtins.RuntimeError"
        assert "Traceback" not in str(error) and ".py" not in str(error)
        env.reset(seed=0)  # the session goes on
        env.step(0)


def test_rlmesh_serve_send_tracebacks_no(serve_process) -> None:
    server = serve_process("envs:CrashingEnv", "--send-tracebacks", "no")
    with rn.RemoteEnv(server.address) as env:
        error = crash(env)
    assert error.remote_traceback == "" and error.remote_type == "builtins.RuntimeError"


def test_process_isolated_sessions_follow_send_tracebacks(serve) -> None:
    quiet = serve(CrashingEnv, isolation="process", send_tracebacks=False)
    with rn.RemoteEnv(quiet.address, connect_timeout_seconds=60) as env:
        error = crash(env)
    assert error.remote_traceback == "" and error.remote_type == "builtins.RuntimeError"
    loud = serve(CrashingEnv, isolation="process")
    with rn.RemoteEnv(loud.address, connect_timeout_seconds=60) as env:
        assert "Traceback" in crash(env).remote_traceback
