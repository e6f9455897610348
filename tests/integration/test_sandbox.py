"""Docker sandbox sessions against real containers (no mocks).

Needs a Docker engine and a Python base image (``.ci/sandbox_setup.sh`` provides both and
exports ``RLMESH_SANDBOX_BASE_IMAGE``). Without an engine the tests skip, except in CI (``CI``
set), where they fail. The sandbox image is built once per run by a session fixture; every
other test reuses it (or its cached layers).
"""

from __future__ import annotations

import contextlib
import gc
import os
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

from rlmesh.numpy import SandboxEnv, SandboxVectorEnv
from rlmesh.sandbox import (
    SandboxBuildError,
    SandboxStartupError,
    reap_orphans,
)
from rlmesh.sandbox.container import DIR_PREFIX, LABEL_SANDBOX, owner_labels

pytestmark = pytest.mark.sandbox

# Every test builds from the same inputs, so the session image (or its layers) is reused.
OPTS: dict[str, Any] = {"rlmesh_package": "local", "connect_timeout_seconds": 60.0}
ROOT = Path(__file__).resolve().parents[2]


def _unavailable(reason: str) -> None:
    message = f"Docker engine needed for sandbox tests: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client for the local Docker engine (skip, or fail in CI, without one)."""
    try:
        from rlmesh.sandbox._docker import docker_client as make_client

        client = make_client()
    except Exception as exc:
        _unavailable(str(exc))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def sandbox_image(docker_client: Any) -> str:
    """Build (or reuse) the CartPole sandbox image once per test run."""
    started = time.perf_counter()
    with SandboxEnv("CartPole-v1", **OPTS) as env:
        print(
            f"\nsandbox session image {env.image}: cached={env.image_cached} "
            f"image={env.image_seconds:.1f}s total start={time.perf_counter() - started:.1f}s"
        )
        return env.image


def _our_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*")}


@pytest.fixture(autouse=True)
def no_leftovers(docker_client: Any) -> Iterator[None]:
    """After each test: no sandbox container, socket directory or build container is left."""
    before = {c.id for c in docker_client.containers.list(all=True)}
    dirs_before = _our_dirs()
    yield
    gc.collect()
    after = docker_client.containers.list(all=True)
    new = [c for c in after if c.id not in before]
    assert not new, f"containers left behind: {[(c.short_id, c.status) for c in new]}"
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


def test_container_is_hardened(docker_client: Any, sandbox_image: str) -> None:
    with SandboxEnv("CartPole-v1", **OPTS) as env:
        info = docker_client.api.inspect_container(env.container_id)
        host = info["HostConfig"]
        assert host["NetworkMode"] == "none"
        assert host["ReadonlyRootfs"] is True
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not host.get("PortBindings")
        assert host["PidsLimit"] and host["PidsLimit"] > 0
        assert host["Memory"] > 0
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
    from rlmesh.sandbox.image import _build_local_wheel, _checkout_root

    wheel = _build_local_wheel(_checkout_root(), tmp_path)
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


def test_close_is_idempotent_and_gc_removes_container(docker_client: Any) -> None:
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


def test_ctrl_c_and_exit_remove_container(docker_client: Any) -> None:
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
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
