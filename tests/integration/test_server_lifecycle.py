"""EnvServer lifecycle: start/serve/wait/shutdown, closing envs exactly once, options."""

from __future__ import annotations

import signal
import threading
import time

import gymnasium as gym
import pytest
from envs import CloseCounter

import rlmesh.numpy as rn
from rlmesh import EnvServer, ServeOptions


def test_shutdown_is_idempotent_and_closes_each_env_exactly_once() -> None:
    factory = CloseCounter()
    server = EnvServer(factory).start()
    clients = [rn.RemoteEnv(server.address) for _ in range(3)]
    for client in clients:
        client.reset(seed=0)
    clients[0].close()  # detaching closes that session's env now
    assert factory.closes == [1]
    server.shutdown()
    server.shutdown()
    assert server.wait(0)
    assert sorted(factory.closes) == [1, 2, 3] and factory.made == 3
    for client in clients[1:]:
        with pytest.raises(ConnectionError):
            client.step(0)
        client.close()


def test_server_never_started_still_closes_its_env() -> None:
    factory = CloseCounter()
    with EnvServer(factory) as server:
        assert server.address.startswith("tcp://127.0.0.1:")
    assert factory.closes == [1]


def test_env_object_is_closed_once_on_shutdown_not_on_detach() -> None:
    env = gym.make("CartPole-v1")
    closes = []
    original = env.close
    env.close = lambda: (closes.append(1), original())[1]  # type: ignore[method-assign]
    with EnvServer(env) as server:
        server.start()
        with rn.RemoteEnv(server.address) as client:
            client.reset(seed=0)
        assert closes == []
    assert closes == [1]


def test_serve_blocks_until_shutdown_from_another_thread() -> None:
    server = EnvServer("CartPole-v1")
    requested = threading.Event()

    def shut_down() -> None:
        requested.set()
        server.shutdown()

    threading.Timer(0.3, shut_down).start()
    server.serve()
    assert requested.is_set()  # serve returned only after the shutdown request
    assert server.wait(0)


def test_remote_shutdown_only_when_allowed() -> None:
    with EnvServer("CartPole-v1") as server:
        server.start()
        assert rn.RemoteEnv(server.address).shutdown("please") is False
        assert not server.wait(0.3)
    allowed = EnvServer("CartPole-v1", options=ServeOptions(allow_remote_shutdown=True)).start()
    assert rn.RemoteEnv(allowed.address).shutdown("done") is True
    assert allowed.wait(5)


def test_idle_sessions_are_closed() -> None:
    factory = CloseCounter()
    with EnvServer(factory, options=ServeOptions(idle_timeout_seconds=0.2)) as server:
        server.start()
        client = rn.RemoteEnv(server.address)
        client.reset(seed=0)
        deadline = time.monotonic() + 5
        while not factory.closes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert factory.closes == [1]
        with pytest.raises(ConnectionError, match="no session"):
            client.step(0)
        client.close()


def test_drain_keeps_serving_connected_clients_then_stops() -> None:
    server = EnvServer("CartPole-v1", options=ServeOptions(drain_timeout_seconds=5)).start()
    client = rn.RemoteEnv(server.address)
    client.reset(seed=0)
    stopper = threading.Thread(target=server.shutdown)
    stopper.start()
    time.sleep(0.3)
    client.step(0)  # still served while draining
    with pytest.raises(ConnectionError, match="shutting down"):
        rn.RemoteEnv(server.address, connect_timeout_seconds=2)
    client.close()  # last session gone: the drain ends
    stopper.join(5)
    assert server.wait(0)


def test_bad_options_name_the_value() -> None:
    with pytest.raises(ValueError, match="idle_timeout_seconds must be None or >= 0, got -1"):
        ServeOptions(idle_timeout_seconds=-1)


def test_unsupported_space_fails_at_serve_time() -> None:
    class GraphEnv(gym.Env):
        observation_space = gym.spaces.Graph(gym.spaces.Box(0, 1, (2,)), None)
        action_space = gym.spaces.Discrete(2)

    with pytest.raises(ValueError, match="Graph spaces .* cannot be served"):
        EnvServer(GraphEnv())


def test_unix_socket_file_is_removed_on_shutdown(tmp_path) -> None:
    path = tmp_path / "env.sock"
    with EnvServer("CartPole-v1", path=str(path)) as server:
        server.start()
        assert server.address == f"ipc://{path}"
        assert path.exists()
        with rn.RemoteEnv(path=str(path)) as client:
            client.reset(seed=0)
    assert not path.exists()


def test_cli_serves_module_callable_with_kwargs_and_stops_on_sigterm(serve_process) -> None:
    server = serve_process("envs:make_image_env", "--kwarg", "render_mode=rgb_array")
    with rn.RemoteEnv(server.address) as env:
        assert env.render_mode == "rgb_array"
        env.reset(seed=0)
        assert env.render().shape == (32, 48, 3)
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(10) == 0


def test_cli_vector_env_with_json_kwargs(serve_process) -> None:
    server = serve_process("CartPole-v1", "--num-envs", "3", "--kwarg", "max_episode_steps=5")
    with rn.RemoteVectorEnv(server.address) as env:
        env.reset(seed=0)
        for _ in range(4):
            _, _, terminated, truncated, _ = env.step([0, 1, 0])
        _, _, terminated, truncated, _ = env.step([1, 0, 1])
        assert list(truncated | terminated) == [True, True, True]


def test_cli_bad_source_exits_with_an_error(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "NoSuchEnv-v9"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "NoSuchEnv" in result.stderr
