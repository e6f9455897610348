"""Shared fixtures: real env servers on loopback and unix sockets, in-thread or in a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rlmesh import EnvServer, ServeOptions

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


class ServerProcess:
    """An ``rlmesh serve`` subprocess and the address it bound."""

    def __init__(self, process: subprocess.Popen[bytes], address: str) -> None:
        self.process = process
        self.address = address

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start ``python -m rlmesh serve`` subprocesses (tests/ on PYTHONPATH for test envs)."""
    started: list[ServerProcess] = []

    def start(*args: str, timeout: float = 30.0) -> ServerProcess:
        ready = tmp_path / f"ready-{len(started)}"
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS_DIR), str(REPO_ROOT)]))
        command = [sys.executable, "-m", "rlmesh", "serve", *args, "--ready-file", str(ready), "--quiet"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if process.poll() is not None:
                raise RuntimeError(f"rlmesh serve exited with {process.returncode}: {process.stderr.read().decode()}")
            if time.monotonic() > deadline:
                process.kill()
                raise TimeoutError(f"rlmesh serve {args} did not become ready in {timeout}s")
            time.sleep(0.02)
        server = ServerProcess(process, ready.read_text().strip())
        started.append(server)
        return server

    yield start
    for server in started:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()
        for stream in (server.process.stdout, server.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def unix_address(tmp_path: Path) -> str:
    """A unix socket address inside the test's temporary directory."""
    return f"unix://{tmp_path}/env.sock"
