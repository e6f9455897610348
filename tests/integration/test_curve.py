"""CURVE endpoints: real keys, real servers on loopback, clients of every backend."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import msgpack
import numpy as np
import pytest
import zmq
from envs import CrashingEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh import EnvServer, ServeOptions
from rlmesh.security import generate_keypair, load_public_key

CONNECT_S = 5.0


class Keys:
    """A server keypair, two authorised client keypairs and one stranger's keypair."""

    def __init__(self, root: Path) -> None:
        self.server_public, self.server_secret = generate_keypair(root / "server", "server")
        self.clients = root / "clients"
        self.alice_public, self.alice = generate_keypair(self.clients, "alice")
        _, self.bob = generate_keypair(self.clients, "bob")
        _, self.stranger = generate_keypair(root / "strangers", "mallory")
        self.server_key = load_public_key(self.server_public).decode()


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def curve_server(serve, keys):
    def start(env="CartPole-v1", **options):
        return serve(
            env,
            "tcp://127.0.0.1:0",
            curve_secret_key=keys.server_secret,
            curve_authorized_keys=keys.clients,
            **options,
        )

    return start


def play(env, steps: int = 3) -> None:
    env.reset(seed=0)
    for _ in range(steps):
        env.step(env.action_space.sample())


def serves_authorised(address: str, keys: Keys) -> None:
    """An authorised client can still reset and step: refusals did not disturb the server."""
    with rn.RemoteEnv(address, curve_server_key=keys.server_key, curve_secret_key=keys.bob) as env:
        play(env)


# -- keygen -----------------------------------------------------------------------------------


def test_keygen_writes_a_pyzmq_keypair_with_a_private_secret_file(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    done = subprocess.run(
        [sys.executable, "-m", "rlmesh", "keygen", str(directory), "--name", "worker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    public, secret = directory / "worker.key", directory / "worker.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert sorted(p.name for p in directory.iterdir()) == ["worker.key", "worker.key_secret"]
    public_key, no_secret = zmq.auth.load_certificate(public)
    same_public, secret_key = zmq.auth.load_certificate(secret)
    assert no_secret is None and same_public == public_key and len(secret_key) == 40
    assert zmq.curve_public(secret_key) == public_key  # a real keypair
    assert public_key.decode() in done.stdout

    again = subprocess.run(
        [sys.executable, "-m", "rlmesh", "keygen", str(directory), "--name", "worker"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 2
    assert "already exists" in again.stderr
    assert zmq.auth.load_certificate(secret)[1] == secret_key  # not overwritten


def test_keygen_refuses_a_name_with_a_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"key name '\.\./x' must be a plain file name"):
        generate_keypair(tmp_path, "../x")
    assert list(tmp_path.iterdir()) == []


# -- authorised clients -----------------------------------------------------------------------


@pytest.mark.parametrize("module_name", ["rlmesh", "rlmesh.numpy", "rlmesh.jax"])
def test_authorised_clients_of_every_backend_step(curve_server, keys, module_name) -> None:
    if module_name == "rlmesh.jax":
        pytest.importorskip("jax", reason="the JAX backend needs jax")
    module = __import__(module_name, fromlist=["RemoteEnv"])
    server = curve_server()
    with module.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice) as env:
        play(env)
    vector = curve_server(lambda: gym.make_vec("CartPole-v1", num_envs=2))
    with module.RemoteVectorEnv(
        vector.address, curve_server_key=keys.server_public, curve_secret_key=keys.alice
    ) as env:
        env.reset(seed=0)
        env.step(np.array([0, 1]))


def test_remote_equals_local_through_curve(curve_server, keys) -> None:
    server = curve_server()
    local = gym.make("CartPole-v1")
    with rn.RemoteEnv(server.address, curve_server_key=keys.server_public, curve_secret_key=keys.alice) as remote:
        np.testing.assert_array_equal(remote.reset(seed=3)[0], local.reset(seed=3)[0])
        for t in range(20):
            obs, reward, terminated, truncated, _ = remote.step(t % 2)
            expected = local.step(t % 2)
            np.testing.assert_array_equal(obs, expected[0])
            assert (reward, terminated, truncated) == expected[1:4]
            if terminated:
                break
    local.close()


def test_run_given_an_address_passes_the_curve_keys(curve_server, keys) -> None:
    server = curve_server()
    result = rlmesh.run(
        rlmesh.RANDOM_SAMPLE,
        server.address,
        seeds=[0],
        max_episode_steps=5,
        curve_server_key=keys.server_key,
        curve_secret_key=keys.alice,
    )
    assert result.num_episodes == 1
    with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE authentication"):
        rlmesh.run(rlmesh.RANDOM_SAMPLE, server.address, seeds=[0], max_episode_steps=5)
    local = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="curve_secret_key, curve_server_key apply only when env is an address"):
        rlmesh.run(rlmesh.RANDOM_SAMPLE, local, curve_server_key=keys.server_key, curve_secret_key=keys.alice)
    local.close()


# -- refused clients --------------------------------------------------------------------------


def test_client_without_keys_is_told_the_server_requires_curve(curve_server, keys) -> None:
    server = curve_server()
    with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE authentication") as caught:
        rn.RemoteEnv(server.address, connect_timeout_seconds=CONNECT_S)
    assert isinstance(caught.value, ConnectionError)
    assert "curve_server_key" in str(caught.value)
    serves_authorised(server.address, keys)


def test_unlisted_client_key_is_refused_and_others_keep_stepping(curve_server, keys) -> None:
    server = curve_server()
    with rn.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice) as alice:
        alice.reset(seed=0)
        with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE authentication and refused"):
            rn.RemoteEnv(
                server.address,
                curve_server_key=keys.server_key,
                curve_secret_key=keys.stranger,
                connect_timeout_seconds=CONNECT_S,
            )
        alice.step(0)  # an existing session is undisturbed
    serves_authorised(server.address, keys)


def test_wrong_server_key_fails_the_handshake(curve_server, keys, tmp_path) -> None:
    server = curve_server()
    other_public, _ = generate_keypair(tmp_path / "other", "other")
    with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE authentication") as caught:
        rn.RemoteEnv(
            server.address,
            curve_server_key=other_public,
            curve_secret_key=keys.alice,
            connect_timeout_seconds=CONNECT_S,
        )
    assert "curve_server_key" in str(caught.value)
    serves_authorised(server.address, keys)


def test_curve_client_against_a_plain_server_is_told_so(serve, keys) -> None:
    server = serve("CartPole-v1")
    with pytest.raises(rlmesh.EndpointConnectionError, match="does not use CURVE"):
        rn.RemoteVectorEnv(
            server.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.alice,
            connect_timeout_seconds=CONNECT_S,
        )
    with rn.RemoteEnv(server.address) as env:
        play(env)


def test_raw_peer_without_curve_gets_no_reply_and_the_server_keeps_serving(curve_server, keys) -> None:
    server = curve_server()
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    try:
        socket.connect(server.address)
        socket.send(msgpack.packb({"op": "shutdown"}))
        assert socket.poll(500) == 0
    finally:
        socket.close()
    serves_authorised(server.address, keys)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"curve_server_key": "x" * 40}, "curve_secret_key is missing"),
        ({"curve_secret_key": "/nonexistent/key_secret"}, "curve_server_key is missing"),
    ],
)
def test_client_with_one_key_is_refused_before_connecting(serve, kwargs, message) -> None:
    server = serve("CartPole-v1")
    with pytest.raises(ValueError, match=message):
        rn.RemoteEnv(server.address, **kwargs)
    with rn.RemoteEnv(server.address) as env:
        play(env)


def test_client_public_certificate_as_secret_key_is_refused(serve, keys) -> None:
    server = serve("CartPole-v1")
    with pytest.raises(ValueError, match=r"holds no secret key; pass the \.key_secret file"):
        rn.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice_public)
    with pytest.raises(FileNotFoundError, match="curve_server_key: .* is neither a 40-character z85 key"):
        rn.RemoteEnv(server.address, curve_server_key="missing.key", curve_secret_key=keys.alice)


# -- server settings --------------------------------------------------------------------------


def test_server_with_half_the_curve_settings_or_no_keys_is_refused(keys, tmp_path) -> None:
    with pytest.raises(ValueError, match="curve_authorized_keys is missing"):
        EnvServer("CartPole-v1", options=ServeOptions(curve_secret_key=keys.server_secret))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"curve_authorized_keys: no \*\.key certificates in"):
        EnvServer("CartPole-v1", options=ServeOptions(curve_secret_key=keys.server_secret, curve_authorized_keys=empty))
    with pytest.raises(FileNotFoundError, match="curve_authorized_keys: .*missing.* is neither"):
        EnvServer(
            "CartPole-v1",
            options=ServeOptions(curve_secret_key=keys.server_secret, curve_authorized_keys=tmp_path / "missing"),
        )
    with pytest.raises(ValueError, match="curve_secret_key: .* holds no secret key"):
        EnvServer(
            "CartPole-v1", options=ServeOptions(curve_secret_key=keys.server_public, curve_authorized_keys=keys.clients)
        )


def test_authorised_keys_as_a_list_of_paths_and_keys(serve, keys) -> None:
    alice_key = load_public_key(keys.alice_public).decode()
    server = serve(
        "CartPole-v1",
        curve_secret_key=keys.server_secret,
        curve_authorized_keys=[alice_key],
    )
    with rn.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice) as env:
        play(env)
    with pytest.raises(rlmesh.EndpointConnectionError, match="refused this client's public key"):
        rn.RemoteEnv(
            server.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.bob,
            connect_timeout_seconds=CONNECT_S,
        )


def test_two_curve_servers_in_one_process_keep_their_own_key_lists(serve, keys, tmp_path) -> None:
    _, carol = generate_keypair(tmp_path / "carol", "carol")
    first = serve("CartPole-v1", curve_secret_key=keys.server_secret, curve_authorized_keys=keys.clients)
    second = serve("CartPole-v1", curve_secret_key=keys.server_secret, curve_authorized_keys=tmp_path / "carol")
    with rn.RemoteEnv(second.address, curve_server_key=keys.server_key, curve_secret_key=carol) as env:
        play(env)
    with pytest.raises(rlmesh.EndpointConnectionError, match="refused"):
        rn.RemoteEnv(
            second.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.alice,
            connect_timeout_seconds=CONNECT_S,
        )
    with pytest.raises(rlmesh.EndpointConnectionError, match="refused"):
        rn.RemoteEnv(
            first.address, curve_server_key=keys.server_key, curve_secret_key=carol, connect_timeout_seconds=CONNECT_S
        )
    serves_authorised(first.address, keys)
    first.shutdown()  # the other server's authentication outlives it
    with rn.RemoteEnv(second.address, curve_server_key=keys.server_key, curve_secret_key=carol) as env:
        play(env)


def test_servers_come_and_go_without_leaving_clients_unchecked(keys) -> None:
    for _ in range(3):
        with EnvServer(
            "CartPole-v1",
            options=ServeOptions(curve_secret_key=keys.server_secret, curve_authorized_keys=keys.clients),
        ) as server:
            server.start()
            with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE"):
                rn.RemoteEnv(server.address, connect_timeout_seconds=CONNECT_S)
            serves_authorised(server.address, keys)


def test_remote_shutdown_under_curve_needs_an_authorised_session(curve_server, keys) -> None:
    server = curve_server(allow_remote_shutdown=True)
    with pytest.raises(rlmesh.EndpointConnectionError):
        rn.RemoteEnv(
            server.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.stranger,
            connect_timeout_seconds=CONNECT_S,
        )
    assert not server.wait(0.2)
    env = rn.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice)
    assert env.shutdown("done") is True
    assert server.wait(10)


def test_env_errors_under_curve_on_loopback_carry_the_traceback(curve_server, keys) -> None:
    server = curve_server(CrashingEnv)
    with rn.RemoteEnv(server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice) as env:
        env.reset(seed=0)
        env.step(0)
        env.step(0)
        with pytest.raises(rlmesh.RemoteEnvError, match="boom at step 3") as caught:
            env.step(0)
    assert "Traceback" in caught.value.remote_traceback


# -- the command line -------------------------------------------------------------------------


def test_rlmesh_serve_with_curve(serve_process, keys) -> None:
    server = serve_process(
        "CartPole-v1",
        "--address",
        "tcp://127.0.0.1:0",
        "--curve-secret-key",
        str(keys.server_secret),
        "--curve-authorized-keys",
        str(keys.clients),
    )
    with rn.RemoteEnv(server.address, curve_server_key=keys.server_public, curve_secret_key=keys.alice) as env:
        play(env)
    with pytest.raises(rlmesh.EndpointConnectionError, match="requires CURVE authentication"):
        rn.RemoteEnv(server.address, connect_timeout_seconds=CONNECT_S)
    with pytest.raises(rlmesh.EndpointConnectionError, match="refused this client's public key"):
        rn.RemoteEnv(
            server.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.stranger,
            connect_timeout_seconds=CONNECT_S,
        )
    serves_authorised(server.address, keys)


def test_keygen_then_serve_uses_the_key_files_as_written(tmp_path, serve_process) -> None:
    root = tmp_path / "k"
    for name, where in (("server", root), ("me", root / "clients")):
        subprocess.run([sys.executable, "-m", "rlmesh", "keygen", str(where), "--name", name], check=True, timeout=60)
    server = serve_process(
        "CartPole-v1",
        "--curve-secret-key",
        os.fspath(root / "server.key_secret"),
        "--curve-authorized-keys",
        os.fspath(root / "clients"),
    )
    with rlmesh.RemoteEnv(
        server.address, curve_server_key=root / "server.key", curve_secret_key=root / "clients" / "me.key_secret"
    ) as env:
        play(env)


def test_vector_env_over_several_curve_endpoints(curve_server, keys, serve) -> None:
    first, second = curve_server(), curve_server(lambda: gym.make_vec("CartPole-v1", num_envs=2))
    with rn.RemoteVectorEnv(
        [first.address, second.address], curve_server_key=keys.server_key, curve_secret_key=keys.alice
    ) as env:
        assert env.num_envs == 3
        env.reset(seed=0)
        env.step(np.array([0, 1, 0]))
    plain = serve("CartPole-v1")
    with pytest.raises(rlmesh.EndpointConnectionError, match="does not use CURVE"):
        rn.RemoteVectorEnv(
            [first.address, plain.address],
            curve_server_key=keys.server_key,
            curve_secret_key=keys.alice,
            connect_timeout_seconds=CONNECT_S,
        )
    serves_authorised(first.address, keys)


def test_curve_with_process_isolated_sessions(curve_server, keys) -> None:
    server = curve_server(isolation="process")
    with rn.RemoteEnv(
        server.address, curve_server_key=keys.server_key, curve_secret_key=keys.alice, connect_timeout_seconds=60
    ) as env:
        play(env)
    with pytest.raises(rlmesh.EndpointConnectionError, match="refused this client's public key"):
        rn.RemoteEnv(
            server.address,
            curve_server_key=keys.server_key,
            curve_secret_key=keys.stranger,
            connect_timeout_seconds=CONNECT_S,
        )
