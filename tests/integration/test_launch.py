"""launch_server and ``rlmesh serve --servers``: real subprocesses, ready files, clean stops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import rlmesh
import rlmesh.numpy as rn
from rlmesh.launch import launch_server


def _unreachable(address: str) -> bool:
    try:
        rn.RemoteVectorEnv(address, connect_timeout_seconds=0.5).close()
    except rlmesh.EndpointConnectionError:
        return True
    return False


def test_servers_split_the_lanes_and_the_ready_file_lists_every_address() -> None:
    with launch_server("CartPole-v1", num_envs=5, servers=2) as server:
        assert len(server.addresses) == 2 and server.address == server.addresses[0]
        lanes = []
        for address in server.addresses:
            with rn.RemoteVectorEnv(address) as part:
                lanes.append(part.num_envs)
        assert lanes == [3, 2]
        with rn.RemoteVectorEnv(server.addresses) as env:
            assert env.num_envs == 5
            env.reset(seed=0)
            assert env.step(np.ones(5, np.int64))[0].shape == (5, 4)
    assert server.process.poll() is not None
    assert all(_unreachable(address) for address in server.addresses), "stop() must end every server process"


def test_single_env_servers_without_num_envs() -> None:
    with launch_server("CartPole-v1", servers=2) as server, rn.RemoteVectorEnv(server.addresses) as env:
        assert env.num_envs == 2 and env.reset(seed=1)[0].shape == (2, 4)


def test_a_server_that_cannot_start_raises_with_its_stderr_and_leaves_nothing_running() -> None:
    with pytest.raises(RuntimeError, match=r"(?s)exit code 2.*NoSuchEnv"):
        launch_server("NoSuchEnv-v0", timeout=30)
    with pytest.raises(RuntimeError, match=r"(?s)--num-envs 1 cannot be split over 2 servers"):
        launch_server("CartPole-v1", num_envs=1, servers=2, timeout=30)


def test_the_cli_refuses_a_bad_split_in_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", "CartPole-v1", "--num-envs", "2", "--servers", "3"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "rlmesh serve: error: --num-envs 2 cannot be split over 3 servers; give each at least one lane "
        "(--debug shows the traceback)"
    ]


LAUNCHER = """
import sys
from rlmesh.launch import launch_server
server = launch_server("CartPole-v1", num_envs=int(sys.argv[1]), servers=int(sys.argv[2]))
print(server.process.pid, *server.addresses, flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("servers", [1, 2])
def test_servers_stop_when_the_program_that_launched_them_is_killed(servers: int) -> None:
    import os
    import signal
    import time

    program = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, "4", str(servers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    members: list[int] = []
    try:
        assert program.stdout is not None
        pid, *addresses = program.stdout.readline().split()
        group = int(pid)  # launch_server starts a new session: the server (or supervisor) leads it
        with rn.RemoteVectorEnv(addresses if servers > 1 else addresses[0]) as env:
            env.reset(seed=0)
        listed = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True, check=True).stdout
        members = [int(p) for p in listed.split()]
        assert len(members) == (1 if servers == 1 else 1 + servers)
        program.send_signal(signal.SIGKILL)  # no chance to stop its servers
        program.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(member) for member in members) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(member) for member in members), "a server outlived the program that launched it"
    finally:
        if program.poll() is None:
            program.kill()
            program.wait(10)
        for stream in (program.stdin, program.stdout):
            if stream is not None:
                stream.close()
        for member in members:
            if _alive(member):
                os.kill(member, signal.SIGKILL)
