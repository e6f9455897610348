"""Shared fixtures: real env servers on loopback and unix sockets, in-thread or in a process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from needs import unavailable

from rlmesh import EnvServer, ServeOptions, shm, stream
from rlmesh.launch import LaunchedServer, launch_server

TESTS_DIR = Path(__file__).parent
REPO_ROOT = TESTS_DIR.parent


DATA_PLANES = ("socket", "shared-memory", "tcp-stream")


@pytest.fixture(params=DATA_PLANES)
def data_plane(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test once per data plane: ZeroMQ only, the shared-memory fast path, the tcp step stream.

    Under "shared-memory", :func:`serve` binds servers without an explicit address to a unix
    socket (the fast path needs one); under "tcp-stream" to tcp loopback, whose sessions
    step over a plain TCP stream; under "socket", ``RLMESH_SHARED_MEMORY=0`` and
    ``RLMESH_TCP_STREAM=0`` keep every client and server (subprocesses and sandboxes
    included) on ZeroMQ.
    """
    for switch in (shm.ENVIRONMENT_SWITCH, stream.ENVIRONMENT_SWITCH):
        if request.param == "socket":
            monkeypatch.setenv(switch, "0")
        else:
            monkeypatch.delenv(switch, raising=False)
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


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A client for the local Docker engine (skip, or fail in CI, without one)."""
    try:
        from rlmesh.sandbox._docker import docker_client as make_client

        client = make_client()
    except Exception as exc:
        unavailable(f"Docker engine needed for sandbox tests: {exc}")
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def base_image(docker_client: Any) -> str:
    """The base image sandboxes use by default, built offline when it is missing."""
    from rlmesh.sandbox.base_image import DEFAULT_BASE_TAG, build_base_image
    from rlmesh.sandbox.image import BASE_IMAGE_ENV, default_base_image

    chosen = default_base_image(docker_client)
    with contextlib.suppress(Exception):
        docker_client.images.get(chosen)
        return chosen
    if os.environ.get(BASE_IMAGE_ENV, "").strip():
        unavailable(f"${BASE_IMAGE_ENV}={chosen} is not present locally and no registry is reachable")
    try:
        return build_base_image(DEFAULT_BASE_TAG)
    except RuntimeError as exc:
        unavailable(f"no local base image and {DEFAULT_BASE_TAG} cannot be built here: {exc}")
    raise AssertionError("unreachable")
