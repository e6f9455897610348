"""The shared-memory fast path: negotiation, opt-outs, buffer lifetimes, fallbacks and faults."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from envs import CountingEnv

import rlmesh
import rlmesh.numpy as rn
from rlmesh import EnvServer, ServeOptions
from rlmesh.connection import RECONNECT_GRACE_S, Connection
from rlmesh.shm.region import REQUEST_HEADER_BYTES, REQUEST_SEQ

CHILD_ENV = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))


def stepping_client(address: str, backend: str, then: str) -> str:
    """A client script that steps ``address`` once over the fast path with ``backend``, then runs ``then``."""
    return (
        f"import sys, {backend} as rn\n"
        f"env = rn.RemoteEnv({address!r})\n"
        "assert env._group.members[0].connection.uses_shared_memory\n"
        "env.reset(seed=0); env.step(1)\n"
        f"{then}"
    )


def connection_of(env: object) -> Connection:
    return env._group.members[0].connection  # type: ignore[attr-defined]


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_unix_sessions_use_shared_memory_and_leave_only_the_socket(serve, tmp_path: Path) -> None:
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env).uses_shared_memory
        assert listing(tmp_path) == ["env.sock"]  # region and doorbells unlinked once mapped
        env.reset(seed=0)
        obs, *_ = env.step(1)
        assert float(obs[0, 0]) == 1.0
    server.shutdown()
    assert listing(tmp_path) == []


def test_process_isolated_sessions_use_shared_memory_too(serve, tmp_path: Path) -> None:
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock", isolation="process")
    with rn.RemoteEnv(server.address) as first, rn.RemoteEnv(server.address) as second:
        assert connection_of(first).uses_shared_memory and connection_of(second).uses_shared_memory
        first.reset(seed=0)
        second.reset(seed=0)
        for t in range(1, 4):
            assert first.step(0)[0][0, 0] == t
        assert second.step(0)[0][0, 0] == 1.0
    server.shutdown()
    assert listing(tmp_path) == []


def test_a_busy_fast_path_session_is_not_idle(serve, tmp_path: Path) -> None:
    # Its requests bypass the server's front, which must still see the session as active.
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock", idle_timeout_seconds=1.5)
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env).uses_shared_memory
        env.reset(seed=0)
        deadline, t = time.monotonic() + 2.5, 0
        while time.monotonic() < deadline:
            t += 1
            assert env.step(0)[0][0, 0] == t
            time.sleep(0.01)
        time.sleep(3.0)  # now idle: the session is closed
        with pytest.raises(ConnectionError, match="no session"):
            env.step(0)


def test_a_crashed_session_process_is_noticed(serve, tmp_path: Path) -> None:
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock", isolation="process")
    with rn.RemoteEnv(server.address) as env:
        assert connection_of(env).uses_shared_memory
        env.reset(seed=0)
        env.step(0)
        (session,) = server._sessions.values()
        session.process.kill()  # dies without closing its end of the channel
        session.process.join(10)
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            env.step(0)
        assert time.monotonic() - started < RECONNECT_GRACE_S
    with rn.RemoteEnv(server.address) as other:  # the server goes on
        assert other.step(1)[0][0, 0] == 1.0


def test_tcp_sessions_and_both_opt_outs_stay_on_zeromq(serve, tmp_path: Path) -> None:
    with rn.RemoteEnv(serve(CountingEnv).address) as env:
        assert not connection_of(env).uses_shared_memory
    unix = serve(CountingEnv, f"unix://{tmp_path}/a.sock")
    with rn.RemoteEnv(unix.address, shared_memory=False) as env:
        assert not connection_of(env).uses_shared_memory
        assert env.step(1)[0][0, 0] == 1.0
    opted_out = serve(CountingEnv, f"unix://{tmp_path}/b.sock", shared_memory=False)
    with rn.RemoteEnv(opted_out.address) as env:
        assert not connection_of(env).uses_shared_memory
        assert env.step(1)[0][0, 0] == 1.0
    assert listing(tmp_path) == ["a.sock", "b.sock"]


def test_environment_switch_turns_it_off(serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_SHARED_MEMORY", "0")
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        assert not connection_of(env).uses_shared_memory


def test_kept_observations_are_never_overwritten(serve, tmp_path: Path) -> None:
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        kept = [env.step(0)[0] for _ in range(12)]  # more than there are reply slots
        for t, obs in enumerate(kept, start=1):
            assert obs.min() == obs.max() == t
        views = [obs[100:101] for obs in kept[:3]]
        del kept
        for _ in range(5):
            env.step(0)
        assert [float(v[0, 0]) for v in views] == [1.0, 2.0, 3.0]


def test_jax_arrays_stay_immutable_across_steps(serve, tmp_path: Path) -> None:
    rj = pytest.importorskip("rlmesh.jax", reason="JAX is an optional extra")
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock")
    with rj.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        kept = [env.step(0)[0] for _ in range(6)]
        assert [float(obs.sum()) / obs.size for obs in kept] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        first, *_ = env.step(0)
        pointer = first.unsafe_buffer_pointer()
        del kept
        assert float(first[0, 0]) == 7.0 and pointer % 64 == 0


def test_messages_too_large_for_the_region_fall_back_to_the_socket(serve, tmp_path: Path) -> None:
    server = serve(lambda: CountingEnv(info_bytes=3 << 20), f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address, validate_actions=False) as env:
        assert connection_of(env).uses_shared_memory
        env.reset(seed=0)
        for t in range(1, 4):
            obs, _, _, _, info = env.step(1)
            assert obs[0, 0] == t and info["padding"].shape == (3 << 20,) and info["padding"][0] == t
        with pytest.raises(rlmesh.InvalidActionError, match=r"expected an integer.*shape \(131072,\)"):
            env.step(np.zeros(1 << 17))  # larger than the request area: the server refuses it
        assert env.step(0)[0][0, 0] == 4


def test_a_malformed_request_in_the_region_gets_an_error_and_the_session_goes_on(serve, tmp_path: Path) -> None:
    server = serve(CountingEnv, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address) as env:
        env.reset(seed=0)
        connection = connection_of(env)
        channel = connection._channel
        start = channel.layout.request_offset
        channel.memory[start : start + 3] = np.frombuffer(b"\xc1\xc1\xc1", np.uint8)
        channel.words[REQUEST_HEADER_BYTES] = 3
        channel.sent += 1
        channel.words[REQUEST_SEQ] = channel.sent
        channel.request_bell.ring()
        assert wait_for(channel.replied, 5)
        header, payload = channel.receive(None)
        assert header.kind == "error" and payload["code"] == "protocol"
        assert "malformed message header" in payload["message"]
        assert env.step(1)[0][0, 0] == 1.0
    with rn.RemoteEnv(server.address) as other:
        assert other.reset(seed=0)[1] == {"t": 0}


def test_a_timed_out_request_does_not_corrupt_the_next_one(serve, tmp_path: Path) -> None:
    class SlowOnce(CountingEnv):
        def step(self, action):
            if self._t == 1:
                time.sleep(0.5)
            return super().step(action)

    server = serve(SlowOnce, f"unix://{tmp_path}/env.sock")
    with rn.RemoteEnv(server.address, request_timeout_seconds=0.1) as env:
        env.reset(seed=0)
        env.step(0)
        with pytest.raises(rlmesh.EndpointTimeoutError):
            env.step(0)
        env.request_timeout_seconds = 5.0
        assert env.step(0)[0][0, 0] == 3.0  # served after the slow one; its late reply is ignored
        assert env.step(0)[0][0, 0] == 4.0


def test_kill_9_of_the_server_is_noticed_and_a_restart_cleans_stale_regions(serve_process, tmp_path: Path) -> None:
    address = f"unix://{tmp_path}/env.sock"
    first = serve_process("envs:CountingEnv", "--address", address)
    env = rn.RemoteEnv(first.address)
    assert connection_of(env).uses_shared_memory
    env.reset(seed=0)
    first.kill()
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        env.step(0)
    assert time.monotonic() - started < RECONNECT_GRACE_S + 2
    env.close()
    # A region offered to a client that never mapped it, as a killed server leaves behind.
    (tmp_path / "env.sock.shm-0123456789abcdef").write_bytes(b"\0" * 4096)
    os.mkfifo(tmp_path / "env.sock.shm-0123456789abcdef.c2s")
    second = serve_process("envs:CountingEnv", "--address", address)
    assert listing(tmp_path) == ["env.sock"]
    with rn.RemoteEnv(second.address) as env:
        assert env.step(1)[0][0, 0] == 1.0


def test_kill_9_of_the_client_leaves_nothing_behind(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = EnvServer(CountingEnv, f"unix://{tmp_path}/env.sock", options=ServeOptions()).start()
    script = stepping_client(server.address, "rlmesh.numpy", "print('ready', flush=True)\nsys.stdin.read()\n")
    client = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=CHILD_ENV
    )
    try:
        assert client.stdout.readline().strip() == "ready"
        assert listing(tmp_path) == ["env.sock"]
        client.send_signal(signal.SIGKILL)
        client.wait(10)
        # The liveness probe notices the vanished client and ends its session.
        assert wait_for(lambda: not server._sessions, 15)
        with rn.RemoteEnv(server.address) as other:
            assert other.step(1)[0][0, 0] == 1.0
    finally:
        client.kill()
        client.wait()
        client.stdin.close()
        client.stdout.close()
        server.shutdown()
    assert listing(tmp_path) == []


def test_a_frozen_server_is_detected_like_over_zeromq(serve_process, tmp_path: Path) -> None:
    server = serve_process("envs:CountingEnv", "--address", f"unix://{tmp_path}/env.sock")
    env = rn.RemoteEnv(server.address)
    env.reset(seed=0)
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            env.step(0)
        assert time.monotonic() - started < 2 * RECONNECT_GRACE_S + 2
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
        env.close()


def test_a_client_left_open_at_interpreter_exit_exits_quietly(tmp_path: Path) -> None:
    import subprocess
    import sys

    server = EnvServer(CountingEnv, f"unix://{tmp_path}/env.sock", options=ServeOptions()).start()
    # It exits without closing the env: __del__ runs at interpreter shutdown.
    script = stepping_client(server.address, "rlmesh.jax", "print('stepped', flush=True)\n")
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=CHILD_ENV, timeout=60)
        assert done.returncode == 0 and done.stdout.strip() == "stepped"
        assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert wait_for(lambda: not server._sessions, 15)  # the server still notices the client left
    finally:
        server.shutdown()
    assert listing(tmp_path) == []
