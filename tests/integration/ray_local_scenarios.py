"""launch_servers on a local Ray (one node): parity, failures, lifetime, CLI.

Runs only inside a loopback-only network namespace (``test_ray.py`` arranges it); all tests share
one Ray started by the module fixture.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from ray_support import (
    actor_states,
    assert_cartpole_vectors_equal,
    assert_only_loopback_listeners,
    pid_alive,
    ray,
    require_loopback_namespace,
    wait_until,
)

import rlmesh.numpy as rn
from rlmesh.errors import EndpointConnectionError
from rlmesh.integrations.ray import RayServers, ServerLaunchError, launch_servers

require_loopback_namespace()

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[str]:
    """One local Ray for the module, bound to 127.0.0.1; yields its GCS address."""
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def cartpole() -> Iterator[RayServers]:
    """Two CartPole servers of 3 lanes each, shared by the tests that only read them."""
    with launch_servers("CartPole-v1", num_servers=2, num_envs=3) as servers:
        yield servers


def test_nothing_listens_outside_loopback(cartpole: RayServers) -> None:
    assert_only_loopback_listeners()
    assert all(address.startswith("tcp://127.0.0.1:") for address in cartpole.addresses)


def test_addresses_are_stable_and_distinct(cartpole: RayServers) -> None:
    assert len(cartpole) == 2 and len(set(cartpole.addresses)) == 2
    assert cartpole.addresses == tuple(cartpole.addresses)
    assert len(cartpole.pids) == 2 and len(set(cartpole.pids)) == 2
    assert "tcp://127.0.0.1:" in repr(cartpole)


def test_each_server_equals_a_local_sync_vector_env(cartpole: RayServers) -> None:
    for index, address in enumerate(cartpole.addresses):
        local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        with rn.RemoteVectorEnv(address) as remote:
            assert remote.num_envs == 3
            assert_cartpole_vectors_equal(remote, local, seed=10 + index, steps=150)
        local.close()


def test_one_vector_env_over_all_servers_equals_a_local_sync_vector_env(cartpole: RayServers) -> None:
    local = gym.make_vec("CartPole-v1", num_envs=6, vectorization_mode="sync")
    with rn.RemoteVectorEnv(list(cartpole.addresses)) as remote:
        assert remote.num_envs == 6 and remote.addresses == cartpole.addresses
        assert_cartpole_vectors_equal(remote, local, seed=7, steps=200)
    local.close()


def test_uneven_lanes_per_server() -> None:
    with launch_servers("CartPole-v1", num_servers=2, num_envs=[1, 3]) as servers:
        local = gym.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
        with rn.RemoteVectorEnv(list(servers.addresses)) as remote:
            assert_cartpole_vectors_equal(remote, local, seed=3, steps=50)
        local.close()


def test_module_callable_source_with_kwargs() -> None:
    source = "gymnasium.envs.classic_control.cartpole:CartPoleEnv"
    servers = launch_servers(source, num_servers=1, num_envs=2, env_kwargs={"sutton_barto_reward": True})
    with servers, rn.RemoteVectorEnv(servers.addresses[0]) as remote:
        remote.reset(seed=0)
        _, reward, terminated, _, _ = remote.step(np.zeros(2, dtype=np.int64))
        # Sutton and Barto's reward is 0 until the pole falls.
        np.testing.assert_array_equal(reward[~terminated], 0.0)


def test_curve_keys_authenticate_clients_of_ray_hosted_servers(tmp_path: Path) -> None:
    from rlmesh import ServeOptions
    from rlmesh.security import generate_keypair

    server_public, server_secret = generate_keypair(tmp_path / "keys", "server")
    _, alice_secret = generate_keypair(tmp_path / "keys" / "clients", "alice")
    options = ServeOptions(curve_secret_key=server_secret, curve_authorized_keys=tmp_path / "keys" / "clients")
    with launch_servers("CartPole-v1", num_servers=2, num_envs=2, serve_options=options) as servers:
        keys = {"curve_server_key": server_public, "curve_secret_key": alice_secret}
        with rn.RemoteVectorEnv(list(servers.addresses), **keys) as env:
            assert env.num_envs == 4
            env.reset(seed=0)
            env.step(np.zeros(4, dtype=np.int64))
        with pytest.raises(EndpointConnectionError, match="CURVE"):
            rn.RemoteVectorEnv(servers.addresses[0], connect_timeout_seconds=5)
        with rn.RemoteVectorEnv(servers.addresses[0], **keys) as env:  # still serving after the refusal
            env.reset(seed=1)


def test_killed_actor_makes_the_client_raise_naming_the_address() -> None:
    servers = launch_servers("CartPole-v1", num_servers=2, num_envs=2)
    with servers:
        victim, survivor = servers.addresses
        with rn.RemoteVectorEnv(victim) as remote, rn.RemoteVectorEnv(survivor) as other:
            remote.reset(seed=0)
            other.reset(seed=0)
            ray.kill(servers.actors[0], no_restart=True)
            deadline = time.monotonic() + 10.0
            with pytest.raises(EndpointConnectionError, match=victim.replace(".", r"\.")):
                while time.monotonic() < deadline:
                    remote.step(np.zeros(2, dtype=np.int64))
            other.step(np.ones(2, dtype=np.int64))  # the other server keeps serving


def test_unknown_env_id_raises_at_launch_then_launching_still_works() -> None:
    with pytest.raises(ServerLaunchError, match="NoSuchEnv") as caught:
        launch_servers("NoSuchEnv-v9", num_servers=2)
    assert "NameNotFound" in caught.value.remote_type
    assert "NoSuchEnv" in caught.value.remote_traceback
    with launch_servers("CartPole-v1", num_servers=1) as servers, rn.RemoteEnv(servers.addresses[0]) as env:
        env.reset(seed=0)


def test_missing_module_raises_at_launch() -> None:
    with pytest.raises(ServerLaunchError, match="no_such_module") as caught:
        launch_servers("no_such_module:make_env", num_servers=1)
    assert caught.value.remote_type.endswith("ModuleNotFoundError")


def test_unplaceable_servers_raise_a_timeout_naming_the_cluster() -> None:
    with pytest.raises(TimeoutError, match="could not place 2 servers of 3 CPU"):
        launch_servers("CartPole-v1", num_servers=2, num_cpus_per_server=3, launch_timeout_seconds=2)
    # The module's two shared servers hold 2 of the 4 CPUs; the failed reservation left the rest free.
    with launch_servers("CartPole-v1", num_servers=1, num_cpus_per_server=2) as servers:
        assert len(servers) == 1


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"num_servers": 0}, ValueError, "num_servers must be a positive integer, got 0"),
        ({"num_servers": 1, "num_envs": 0}, ValueError, "num_envs must be None, a positive integer or one"),
        ({"num_servers": 2, "num_envs": [3]}, ValueError, r"num_envs has 1 counts for 2 servers"),
        ({"num_servers": 1, "placement": "diagonal"}, ValueError, "placement 'diagonal' is not one of"),
        ({"num_servers": 1, "vectorization_mode": "fast"}, ValueError, "vectorization_mode 'fast'"),
        ({"num_servers": 1, "num_cpus_per_server": -1}, ValueError, "num_cpus_per_server must be >= 0"),
        ({"num_servers": 1, "packages": ["x"]}, TypeError, r"sandbox options \['packages'\] need sandbox=True"),
        ({"num_servers": 1, "serve_options": {"allow_insecure": True}}, TypeError, "serve_options must be a rlmesh"),
    ],
)
def test_bad_arguments_name_the_value(arguments: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        launch_servers("CartPole-v1", **arguments)


def test_shutdown_is_idempotent_and_leaves_no_actor_or_process() -> None:
    servers = launch_servers("CartPole-v1", num_servers=2, num_envs=2)
    client = rn.RemoteVectorEnv(servers.addresses[1])
    client.reset(seed=0)
    servers.shutdown()
    servers.shutdown()
    assert servers.closed and "closed" in repr(servers)
    wait_until(lambda: actor_states(servers.actors) == ["DEAD", "DEAD"], 10, "both actors dead")
    wait_until(lambda: not any(pid_alive(pid) for pid in servers.pids), 10, "both server processes gone")
    with pytest.raises(EndpointConnectionError):
        client.step(np.zeros(2, dtype=np.int64))
    client.close()


def test_collected_handle_stops_its_servers() -> None:
    servers = launch_servers("CartPole-v1", num_servers=1)
    actors, pids = servers.actors, servers.pids
    del servers
    gc.collect()
    wait_until(lambda: actor_states(actors) == ["DEAD"], 10, "the actor dead")
    wait_until(lambda: not pid_alive(pids[0]), 10, "the server process gone")


def test_driver_exit_leaves_nothing(local_ray: str) -> None:
    driver = textwrap.dedent(
        f"""
        from rlmesh.integrations.ray import launch_servers
        servers = launch_servers("CartPole-v1", num_servers=1, ray_address={local_ray!r})
        print(servers.pids[0], servers.actors[0]._actor_id.hex(), flush=True)
        """
    )
    done = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pid_text, actor_id = done.stdout.split()
    wait_until(lambda: ray._private.state.actors()[actor_id]["State"] == "DEAD", 15, "the actor dead")
    wait_until(lambda: not pid_alive(int(pid_text)), 15, "the server process gone")


def test_cli_serve_ray_prints_and_writes_addresses(local_ray: str, tmp_path: Path) -> None:
    from rlmesh.security import generate_keypair

    server_public, server_secret = generate_keypair(tmp_path / "keys", "server")
    _, client_secret = generate_keypair(tmp_path / "keys" / "clients", "client")
    ready = tmp_path / "ready"
    command = [sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--ray", "--servers", "2", "--num-envs", "5"]
    command += ["--ray-address", local_ray, "--ready-file", str(ready)]
    command += ["--curve-secret-key", str(server_secret), "--curve-authorized-keys", str(tmp_path / "keys" / "clients")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 120, "the ready file")
        assert process.poll() is None, process.communicate()[1]
        addresses = ready.read_text().split()
        assert len(addresses) == 2
        # The 5 lanes are split over the 2 servers, as for rlmesh serve --servers without Ray,
        # and the servers require the CURVE keys the flags name.
        keys = {"curve_server_key": server_public, "curve_secret_key": client_secret}
        with rn.RemoteVectorEnv(addresses, **keys) as env:
            assert env.num_envs == 5
            env.reset(seed=0)
        with pytest.raises(EndpointConnectionError, match="CURVE"):
            rn.RemoteVectorEnv(addresses[0], connect_timeout_seconds=5)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.strip().endswith(" ".join(addresses))
    assert "serving CartPole-v1 on 2 Ray servers (5 lanes in all)" in out
    assert all(not pid_alive(pid) for pid in _pids_serving(addresses))


def _pids_serving(addresses: list[str]) -> list[int]:
    """Processes that still listen on any of ``addresses`` (via ``ss``)."""
    ports = {address.rsplit(":", 1)[1] for address in addresses}
    listing = subprocess.run(["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True).stdout
    pids = []
    for line in listing.splitlines():
        fields = line.split()
        if fields[3].rsplit(":", 1)[1] in ports and "pid=" in line:
            pids.append(int(line.split("pid=", 1)[1].split(",", 1)[0]))
    return pids


@pytest.mark.sandbox
def test_sandboxed_servers_equal_local_lanes_and_leave_no_container() -> None:
    from needs import require_docker

    require_docker()
    import docker

    options = {"rlmesh_package": "local", "base_image": os.environ.get("RLMESH_SANDBOX_BASE_IMAGE")}
    # The first launch may build the sandbox image (minutes on a small machine).
    with launch_servers(
        "CartPole-v1", num_servers=1, num_envs=2, sandbox=True, launch_timeout_seconds=900, **options
    ) as servers:
        (container,) = servers.container_ids
        assert container and servers.addresses[0].startswith("tcp://127.0.0.1:")
        local = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
        with rn.RemoteVectorEnv(list(servers.addresses)) as remote:
            assert_cartpole_vectors_equal(remote, local, seed=4, steps=60)
        with rn.RemoteVectorEnv(list(servers.addresses)) as again:  # a second client gets its own session
            again.reset(seed=0)
        local.close()
    engine = docker.from_env()
    try:
        assert not engine.containers.list(all=True, filters={"id": container})
    finally:
        engine.close()


@pytest.mark.slow
def test_ppo_example_trains_through_ray_hosted_servers(tmp_path: Path) -> None:
    pytest.importorskip("flax", reason="the PPO example needs the rlmesh[flax] extra")
    out = tmp_path / "run"
    command = [sys.executable, str(REPO_ROOT / "examples" / "ppo_cartpole.py"), "--ray", "2", "--double-buffer"]
    command += ["--total-steps", "1024", "--num-envs", "4", "--num-steps", "32", "--eval-episodes", "2"]
    command += ["--no-progress", "--out-dir", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=400, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["mode"] == "ray" and summary["servers"] == 2 and summary["double_buffer"]
    assert summary["env_steps"] == 1024 and len(summary["final_eval_returns"]) == 2


def test_no_ray_on_the_host_network() -> None:
    assert os.environ["RLMESH_LOOPBACK_NAMESPACE"] == "1"
    assert_only_loopback_listeners()
