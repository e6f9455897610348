"""step_async/step_wait and reset_async/reset_wait return exactly what step and reset do."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from test_remote_equality import assert_tree_equal

import rlmesh
import rlmesh.jax as rj
import rlmesh.numpy as rn

# Every test here runs over ZeroMQ only and over the shared-memory fast path.
pytestmark = pytest.mark.usefixtures("data_plane")


def _make_vec() -> gym.vector.VectorEnv:
    return gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")


@pytest.mark.parametrize("backend", [rn, rlmesh, rj], ids=["numpy", "plain", "jax"])
def test_async_equals_sync_step_by_step(serve, backend) -> None:
    server = serve(_make_vec)
    rng = np.random.default_rng(0)
    local = _make_vec()
    with backend.RemoteVectorEnv(server.address) as remote:
        remote.reset_async(seed=5)
        _check(backend, remote.reset_wait(), local.reset(seed=5), "reset")
        finished = 0
        for t in range(200):
            actions = rng.integers(0, 2, 3)
            remote.step_async(actions)
            expected = local.step(actions)
            _check(backend, remote.step_wait(), expected, f"step {t}")
            finished += int(np.sum(expected[2] | expected[3]))
        assert finished >= 3, "the run must cross autoresets"
    local.close()


def _check(backend, got, expected, where: str) -> None:
    if backend is rj:  # JAX demotes float64 rewards to float32 without jax_enable_x64: compare values
        for a, b in zip(got[:-1], expected[:-1], strict=True):
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=where)
        return
    assert_tree_equal(list(_numpy(got)), list(expected), where)


def _numpy(value):
    if isinstance(value, dict):
        return {k: _numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_numpy(v) for v in value] if isinstance(value, list) else tuple(_numpy(v) for v in value)
    if isinstance(value, rlmesh.Tensor) or hasattr(value, "__dlpack__"):
        return np.asarray(value)
    return value


def test_async_misuse_raises_clear_errors_and_the_env_keeps_working(serve) -> None:
    server = serve(_make_vec)
    with rn.RemoteVectorEnv(server.address) as remote:
        with pytest.raises(rlmesh.AsyncCallError, match=r"step_wait\(\) called without a pending step_async"):
            remote.step_wait()
        with pytest.raises(rlmesh.AsyncCallError, match=r"reset_wait\(\) called without a pending reset_async"):
            remote.reset_wait()
        remote.reset_async(seed=0)
        with pytest.raises(rlmesh.AsyncCallError, match=r"step_async\(\) called while a reset_async\(\) is pending"):
            remote.step_async(np.zeros(3, np.int64))
        with pytest.raises(rlmesh.AsyncCallError, match=r"step_wait\(\).*\(a reset_async is pending\)"):
            remote.step_wait()
        obs, _ = remote.reset_wait()
        assert obs.shape == (3, 4)
        remote.step_async(np.zeros(3, np.int64))
        with pytest.raises(rlmesh.AsyncCallError, match=r"step_async\(\) called while a step_async\(\) is pending"):
            remote.step_async(np.zeros(3, np.int64))
        with pytest.raises(rlmesh.AsyncCallError, match="call step_wait"):
            remote.reset()
        obs, rewards, *_ = remote.step_wait()
        assert obs.shape == (3, 4) and rewards.tolist() == [1.0, 1.0, 1.0]
        assert remote.step(np.ones(3, np.int64))[0].shape == (3, 4)  # still serving


@pytest.mark.parametrize("backend", [rn, rj], ids=["numpy-server-checks", "jax-client-checks"])
def test_invalid_action_leaves_nothing_pending(serve, backend) -> None:
    server = serve(_make_vec)
    with backend.RemoteVectorEnv(server.address) as remote:
        remote.reset(seed=0)
        with pytest.raises(rlmesh.InvalidActionError, match="5"):
            remote.step_async(np.array([0, 5, 1]))  # checked locally by the JAX backend
            remote.step_wait()  # or by the server
        with pytest.raises(rlmesh.AsyncCallError):
            remote.step_wait()
        assert remote.step(np.array([0, 1, 1]))[0].shape == (3, 4)


def test_close_with_a_pending_step_detaches_cleanly(serve) -> None:
    server = serve(_make_vec)
    remote = rn.RemoteVectorEnv(server.address)
    remote.reset(seed=0)
    remote.step_async(np.zeros(3, np.int64))
    remote.close()
    assert remote.closed
    with pytest.raises(rlmesh.EndpointConnectionError, match="closed"):
        remote.step(np.zeros(3, np.int64))
    with rn.RemoteVectorEnv(server.address) as again:  # the server serves the next client
        assert again.reset(seed=0)[0].shape == (3, 4)
