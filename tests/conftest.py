"""Shared fixtures: real env servers on loopback and unix sockets, in-thread or in a process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh import EnvServer, ServeOptions
from rlmesh.launch import LaunchedServer, launch_server

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent


@pytest.fixture
def serve() -> Iterator[Callable[..., EnvServer]]:
    """Start EnvServers in background threads; every one is shut down after the test."""
    servers: list[EnvServer] = []

    def start(env: Any, address: str | None = None, **options: Any) -> EnvServer:
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
