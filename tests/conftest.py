"""Shared fixtures: real env servers on loopback and unix sockets, in-thread or in a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh import EnvServer, ServeOptions
from rlmesh.launch import LaunchedServer, launch_server
from rlmesh.shm import ENVIRONMENT_SWITCH

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent


DATA_PLANES = ("socket", "shared-memory")


@pytest.fixture(params=DATA_PLANES)
def data_plane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per data plane: ZeroMQ only, and the shared-memory fast path.

    Under "shared-memory", :func:`serve` binds servers without an explicit address to a unix
    socket (the fast path needs one); under "socket", ``RLMESH_SHARED_MEMORY=0`` keeps every
    client and server (subprocesses and sandboxes included) on ZeroMQ.
    """
    if request.param == "socket":
        monkeypatch.setenv(ENVIRONMENT_SWITCH, "0")
    else:
        monkeypatch.delenv(ENVIRONMENT_SWITCH, raising=False)
    return request.param


@pytest.fixture
def serve(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., EnvServer]]:
    """Start EnvServers in background threads; every one is shut down after the test."""
    servers: list[EnvServer] = []
    plane = request.getfixturevalue("data_plane") if "data_plane" in request.fixturenames else "socket"

    def start(env: Any, address: str | None = None, **options: Any) -> EnvServer:
        if address is None and plane == "shared-memory":
            address = f"unix://{tmp_path}/served-{len(servers)}.sock"
        server = EnvServer(env, address, options=ServeOptions(**options) if options else None)
        servers.append(server.start())
        return server

    yield start
    for server in servers:
        server.shutdown()


@pytest.fixture
def serve_process() -> Iterator[Callable[..., LaunchedServer]]:
    """Start ``rlmesh serve`` subprocesses (tests/ on PYTHONPATH for test envs); each is stopped after the test."""
    started: list[LaunchedServer] = []

    def start(*args: str, timeout: float = 30.0) -> LaunchedServer:
        server = launch_server(*args, pythonpath=[TESTS_DIR, REPO_ROOT], timeout=timeout)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def unix_address(tmp_path: Path) -> str:
    """A unix socket address inside the test's temporary directory."""
    return f"unix://{tmp_path}/env.sock"
