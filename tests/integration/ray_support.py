"""Helpers for the Ray scenario modules, which run only inside a loopback-only namespace.

``test_ray.py`` runs those modules in such a namespace; run directly, they skip rather than
start Ray on the host network.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="needs the rlmesh[ray] extra")

from rlmesh.integrations.ray.namespace import in_loopback_namespace, outside_listeners  # noqa: E402


def require_loopback_namespace() -> None:
    """Skip the calling module unless this process runs in a loopback-only network namespace."""
    if not in_loopback_namespace() or os.environ.get("RLMESH_LOOPBACK_NAMESPACE") != "1":
        pytest.skip(
            "Ray may only start inside a loopback-only network namespace; run tests/integration/test_ray.py",
            allow_module_level=True,
        )


def assert_only_loopback_listeners() -> None:
    """Fail when any socket in this namespace listens on a non-loopback address."""
    assert outside_listeners() == []


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds, failing with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout}s")
        time.sleep(0.1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def actor_states(actors: Any) -> list[str]:
    """Ray's recorded state (``ALIVE``, ``DEAD``, ...) of each actor handle."""
    table = ray._private.state.actors()
    return [table[actor._actor_id.hex()]["State"] for actor in actors]


def assert_cartpole_vectors_equal(remote: Any, local: Any, *, seed: int, steps: int) -> None:
    """Reset both with ``seed``, step both with the same random CartPole actions, compare every value."""
    rng = np.random.default_rng(seed)
    _assert_same(remote.reset(seed=seed), local.reset(seed=seed), "reset")
    for t in range(steps):
        actions = rng.integers(0, 2, local.num_envs)
        _assert_same(remote.step(actions), local.step(actions), f"step {t}")


def _assert_same(remote: Any, local: Any, where: str) -> None:
    if isinstance(local, dict):
        assert set(remote) == set(local), f"{where}: keys {sorted(remote)} != {sorted(local)}"
        for key in local:
            _assert_same(remote[key], local[key], f"{where}[{key!r}]")
    elif isinstance(local, tuple | list):
        assert len(remote) == len(local), where
        for index, (r, item) in enumerate(zip(remote, local, strict=True)):
            _assert_same(r, item, f"{where}[{index}]")
    elif isinstance(local, np.ndarray):
        remote = np.asarray(remote)
        assert remote.dtype == local.dtype and remote.shape == local.shape, where
        np.testing.assert_array_equal(remote, local, err_msg=where)
    else:
        assert remote == local, f"{where}: {remote!r} != {local!r}"
