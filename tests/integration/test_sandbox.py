"""Docker sandbox sessions against real containers (no mocks).

Needs a Docker engine (``.ci/sandbox_setup.sh`` installs and starts one). The offline base
image ``rlmesh/python-base:3.11`` is built by a session fixture when missing (root and
debootstrap needed). Without an engine or a way to get a base image the tests skip with the
reason, except in CI (``CI`` set), where they fail. The sandbox image is built once per run by
a session fixture; every other test reuses it (or its cached layers).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlmesh.numpy import SandboxEnv, SandboxOptions, SandboxVectorEnv
from rlmesh.sandbox import (
    SandboxBuildError,
    SandboxStartupError,
    reap_orphans,
)
from rlmesh.sandbox.container import DIR_PREFIX, LABEL_SANDBOX, owner_labels
from rlmesh.sandbox.options import default_cpus

# Every test runs over ZeroMQ only and over the shared-memory fast path.
# Sandboxes talk over a unix socket: the tcp step stream never applies to them.
pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.usefixtures("data_plane"),
    pytest.mark.parametrize("data_plane", ("socket", "shared-memory"), indirect=True),
]

# Every test builds from the same inputs, so the session image (or its layers) is reused.
OPTS: dict[str, Any] = {"rlmesh_package": "local", "connect_timeout_seconds": 60.0}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def sandbox_image(base_image: str) -> str:
    """Build (or reuse) the CartPole sandbox image once per test run."""
    started = time.perf_counter()
    with SandboxEnv("CartPole-v1", **OPTS) as env:
        print(
            f"\nsandbox session image {env.image}: cached={env.image_cached} "
            f"image={env.image_seconds:.1f}s total start={time.perf_counter() - started:.1f}s"
        )
        return env.image


def _our_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}{os.getpid()}-*")}


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: Any, base_image: str) -> Iterator[None]:
    """After each test: no sandbox container or socket directory of this process is left.

    Only this process's own containers and directories are checked: other processes on the
    machine may run sandboxes at the same time.
    """
    dirs_before = _our_dirs()
    yield
    gc.collect()
    mine = docker_client.containers.list(
        all=True, filters={"label": [f"{LABEL_SANDBOX}=1", f"rlmesh.owner.pid={os.getpid()}"]}
    )
    assert not mine, f"sandbox containers left behind: {[c.short_id for c in mine]}"
    assert _our_dirs() <= dirs_before, f"socket dirs left: {_our_dirs() - dirs_before}"


def test_cartpole_matches_local_step_by_step(sandbox_image: str) -> None:
    import gymnasium as gym

    local = gym.make("CartPole-v1")
    try:
        with SandboxEnv("CartPole-v1", **OPTS) as env:
            assert env.image.startswith("rlmesh-sandbox:")
            assert env.source == "CartPole-v1"
            assert env.container_id
            for seed in (0, 1):
                obs, _ = env.reset(seed=seed)
                expected, _ = local.reset(seed=seed)
                np.testing.assert_array_equal(obs, expected)
                rng = np.random.default_rng(seed)
                done = False
                steps = 0
                while not done:
                    action = int(rng.integers(2))
                    obs, reward, terminated, truncated, _ = env.step(action)
                    e_obs, e_reward, e_term, e_trunc, _ = local.step(action)
                    np.testing.assert_array_equal(obs, e_obs)
                    assert (reward, terminated, truncated) == (e_reward, e_term, e_trunc)
                    done = terminated or truncated
                    steps += 1
                assert steps > 1
    finally:
        local.close()


def test_gym_scheme_and_make_kwargs(sandbox_image: str) -> None:
    with SandboxEnv("gym://CartPole-v1", max_episode_steps=5, **OPTS) as env:
        env.reset(seed=3)
        for step in range(1, 6):
            _, _, terminated, truncated, _ = env.step(step % 2)
            assert not terminated
            assert truncated == (step == 5), f"step {step}"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_env_three_lanes(mode: str, sandbox_image: str) -> None:
    import gymnasium as gym

    local = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    try:
        with SandboxVectorEnv("CartPole-v1", 3, mode, **OPTS) as env:
            assert env.num_envs == 3
            obs, _ = env.reset(seed=7)
            expected, _ = local.reset(seed=7)
            assert np.shape(obs) == (3, 4)
            np.testing.assert_array_equal(obs, expected)
            for t in range(30):
                actions = np.array([t % 2, (t + 1) % 2, t % 3 % 2])
                obs, rewards, term, trunc, _ = env.step(actions)
                e_obs, e_rewards, e_term, e_trunc, _ = local.step(actions)
                np.testing.assert_array_equal(obs, e_obs)
                np.testing.assert_array_equal(rewards, e_rewards)
                np.testing.assert_array_equal(term, e_term)
                np.testing.assert_array_equal(trunc, e_trunc)
    finally:
        local.close()


def test_container_is_hardened(docker_client: Any, sandbox_image: str, data_plane: str) -> None:
    with SandboxEnv("CartPole-v1", **OPTS) as env:
        # The shared-memory fast path works across the container boundary, hardening unchanged.
        assert env.client._group.members[0].connection.uses_shared_memory == (data_plane == "shared-memory")
        socket_dir = Path(env.address[len("ipc://") :]).parent
        assert sorted(p.name for p in socket_dir.iterdir() if p.name.startswith("env.sock")) == ["env.sock"]
        info = docker_client.api.inspect_container(env.container_id)
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not host.get("PortBindings")
        assert host["NanoCpus"] == round(default_cpus() * 1e9)
        assert host["Memory"] == host["MemorySwap"] == 2 * 1024**3
        assert host["PidsLimit"] == 256
        user = info["Config"]["User"]
        assert user and user.split(":")[0] not in ("", "0", "root")
        assert set(info["NetworkSettings"]["Networks"]) == {"none"}
        labels = info["Config"]["Labels"]
        assert labels[LABEL_SANDBOX] == "1"
        assert labels["rlmesh.owner.pid"] == str(os.getpid())
        mounts = {m["Destination"]: m for m in info["Mounts"]}
        assert mounts["/run/rlmesh"]["Source"] == str(Path(env.address[len("ipc://") :]).parent)
        assert env.address.startswith("ipc://")
        env.reset(seed=0)


def test_resource_limits_from_sandbox_options(docker_client: Any, sandbox_image: str) -> None:
    options = SandboxOptions(cpus=0.5, memory="768m", pids=64)
    with SandboxEnv("CartPole-v1", sandbox_options=options, max_episode_steps=3, **OPTS) as env:
        host = docker_client.api.inspect_container(env.container_id)["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == host["MemorySwap"] == 768 * 1024**2
        assert host["PidsLimit"] == 64
        env.reset(seed=0)
        truncated = [env.step(0)[3] for _ in range(3)]
        assert truncated == [False, False, True]  # max_episode_steps reached the env, not Docker


def test_more_cpus_than_the_engine_refused_before_any_container(docker_client: Any, sandbox_image: str) -> None:
    with pytest.raises(ValueError, match=r"SandboxOptions.cpus=4096 exceeds the \d+ CPUs"):
        SandboxEnv("CartPole-v1", sandbox_options=SandboxOptions(cpus=4096), **OPTS)
    with SandboxEnv("CartPole-v1", **OPTS) as env:  # the next sandbox starts as usual
        env.reset(seed=0)


PROBE = """
import json, os, socket, sys

directory = sys.argv[1]
results = {}


def attempt(name, action):
    try:
        action()
        results[name] = "allowed"
    except PermissionError:
        results[name] = "denied"
    except OSError as exc:
        results[name] = f"error {exc.errno}"


def connect():
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(os.path.join(directory, "env.sock"))


attempt("list", lambda: os.listdir(directory))
attempt("connect", connect)
attempt("plant", lambda: open(os.path.join(directory, "planted"), "x").close())
attempt("move", lambda: os.rename(os.path.join(directory, "env.sock"), os.path.join(directory, "moved")))
attempt("chmod", lambda: os.chmod(directory, 0o777))
print(json.dumps(results))
"""
PROBE_USER = "rlmesh-probe"


@pytest.fixture(scope="session")
def other_accounts() -> Iterator[list[pwd.struct_passwd]]:
    """Local accounts other than the caller: ``nobody`` and a created one (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("probing the socket directory as another account needs root (to switch user)")
    created = False
    try:
        pwd.getpwnam(PROBE_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            pytest.skip("useradd is not installed, so no second local account can be created")
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PROBE_USER],
            check=True,
            capture_output=True,
        )
        created = True
    accounts = [pwd.getpwnam(PROBE_USER)]
    with contextlib.suppress(KeyError):
        accounts.append(pwd.getpwnam("nobody"))
    yield accounts
    if created:
        subprocess.run(["userdel", PROBE_USER], check=False, capture_output=True)


def test_socket_directory_closed_to_other_accounts(
    docker_client: Any, sandbox_image: str, other_accounts: list[pwd.struct_passwd]
) -> None:
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    with SandboxEnv("CartPole-v1", **OPTS) as env:
        directory = Path(env.address[len("ipc://") :]).parent
        info = directory.stat()
        assert info.st_mode & 0o777 == 0o700
        user = docker_client.api.inspect_container(env.container_id)["Config"]["User"]
        assert user == f"{info.st_uid}:{info.st_gid}"
        with pytest.raises(KeyError):
            pwd.getpwuid(info.st_uid)  # no host account shares the container's uid
        env.reset(seed=0)
        for account in other_accounts:
            probe = subprocess.run(
                [python, "-c", PROBE, str(directory)],
                user=account.pw_uid,
                group=account.pw_gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                cwd="/",
            )
            assert probe.returncode == 0, probe.stderr
            results = json.loads(probe.stdout)
            assert results == dict.fromkeys(("list", "connect", "plant", "move", "chmod"), "denied"), account.pw_name
        assert sorted(os.listdir(directory)) == ["env.sock", "ready"]
        env.step(0)  # the owner still drives the env


def test_symlink_out_of_a_py_source_refused_before_docker(docker_client: Any, tmp_path: Path) -> None:
    secret = tmp_path / "host_secret.txt"
    secret.write_text("host secret")
    package = tmp_path / "linky_env_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("import gymnasium\n\ndef make():\n    return gymnasium.make('CartPole-v1')\n")
    (package / "host_secret.txt").symlink_to(secret)
    images_before = {image.id for image in docker_client.images.list(all=True)}
    with pytest.raises(ValueError, match="host_secret.txt"):
        SandboxEnv(f"py://{package}:make", **OPTS)
    assert {image.id for image in docker_client.images.list(all=True)} == images_before


def test_missing_import_names_the_module(sandbox_image: str) -> None:
    with pytest.raises(SandboxBuildError, match="no_such_module_for_rlmesh_test"):
        SandboxEnv("CartPole-v1", imports=["no_such_module_for_rlmesh_test"], **OPTS)


def test_crashing_factory_reports_its_traceback(tmp_path: Path, sandbox_image: str) -> None:
    module = tmp_path / "crashing_env_factory.py"
    module.write_text(
        textwrap.dedent(
            """
            def make_env():
                raise RuntimeError("env factory exploded on purpose")
            """
        )
    )
    with pytest.raises(SandboxStartupError) as info:
        SandboxEnv(f"py://{module}:make_env", **OPTS)
    message = str(info.value)
    assert "env factory exploded on purpose" in message
    assert "Traceback" in message
    assert "crashing_env_factory.py" in message


def test_server_not_ready_in_time_reports_and_removes_the_container(tmp_path: Path, sandbox_image: str) -> None:
    module = tmp_path / "slow_env_factory.py"
    module.write_text(
        "import time\n\n\ndef make_env():\n    print('factory started', flush=True)\n    time.sleep(600)\n"
    )
    opts = {**OPTS, "connect_timeout_seconds": 5.0}
    with pytest.raises(SandboxStartupError, match=r"not ready within 5s \(connect_timeout_seconds\)") as info:
        SandboxEnv(f"py://{module}:make_env", **opts)
    assert "factory started" in str(info.value)  # the container's own log lines are included


def test_local_py_source_serves(tmp_path: Path, sandbox_image: str) -> None:
    module = tmp_path / "my_sandbox_env.py"
    module.write_text(
        textwrap.dedent(
            """
            import gymnasium

            def make_env(max_steps=3):
                return gymnasium.make("CartPole-v1", max_episode_steps=max_steps)
            """
        )
    )
    with SandboxEnv(f"py://{module}:make_env", max_steps=2, **OPTS) as env:
        env.reset(seed=0)
        _, _, _, truncated, _ = env.step(0)
        assert not truncated
        _, _, _, truncated, _ = env.step(1)
        assert truncated


def test_second_start_reuses_cached_image(tmp_path: Path, sandbox_image: str) -> None:
    # A wheel frozen now, so edits to the checkout during the run cannot change the spec
    # (rlmesh_package="local" hashes the live sources).
    from rlmesh.sandbox.wheel import build_local_wheel, checkout_root

    wheel = build_local_wheel(checkout_root(), tmp_path)
    opts = {**OPTS, "rlmesh_package": str(wheel)}
    timings: list[tuple[bool, float, float]] = []
    images: list[str] = []
    for attempt in (1, 2):
        started = time.perf_counter()
        with SandboxEnv("CartPole-v1", **opts) as env:
            timings.append((env.image_cached, env.image_seconds, time.perf_counter() - started))
            images.append(env.image)
            env.reset(seed=0)
        print(f"\nstart {attempt}: cached={timings[-1][0]} image={timings[-1][1]:.2f}s ready={timings[-1][2]:.2f}s")
    assert images[0] == images[1]
    assert timings[1][0], "the second start of the same spec must reuse the cached image"


def test_close_is_idempotent_and_gc_removes_container(docker_client: Any, sandbox_image: str) -> None:
    env = SandboxEnv("CartPole-v1", **OPTS)
    env.close()
    env.close()
    assert env.closed
    env = SandboxEnv("CartPole-v1", **OPTS)
    container_id = env.container_id
    env.client.close()  # the client is closed by its owner; the sandbox is only collected
    del env
    gc.collect()
    ids = {c.id for c in docker_client.containers.list(all=True)}
    assert container_id not in ids


def test_ctrl_c_and_exit_remove_container(docker_client: Any, sandbox_image: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from rlmesh.numpy import SandboxEnv

        env = SandboxEnv("CartPole-v1", rlmesh_package="local")
        print(env.container_id, flush=True)
        time.sleep(120)
        """
    )
    # The with-block closes the pipes whatever happens, so no file leaks into later tests.
    with subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            container_id = proc.stdout.readline().strip()
            assert container_id, proc.stderr.read() if proc.stderr else ""
            assert container_id in {c.id for c in docker_client.containers.list()}
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "KeyboardInterrupt" in stderr
    assert container_id not in {c.id for c in docker_client.containers.list(all=True)}


def test_orphans_of_dead_processes_are_reaped(docker_client: Any, sandbox_image: str) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    labels = {**owner_labels(), "rlmesh.owner.pid": dead.stdout.strip(), "rlmesh.owner.start": ""}
    orphan = docker_client.containers.create(
        sandbox_image, entrypoint=["sleep", "300"], labels=labels, network_mode="none"
    )
    try:
        assert orphan.id in reap_orphans(docker_client)
        assert orphan.id not in {c.id for c in docker_client.containers.list(all=True)}
    finally:
        with contextlib.suppress(Exception):
            orphan.remove(force=True)


def test_default_rlmesh_package_failure_says_local(sandbox_image: str) -> None:
    # The default installs rlmesh==<host version> from the index, where this version is absent.
    opts = {**OPTS, "rlmesh_package": None}
    with pytest.raises(SandboxBuildError, match='rlmesh_package="local"'):
        SandboxEnv("CartPole-v1", **opts)
