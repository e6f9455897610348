"""Start ``rlmesh serve`` as a subprocess, wait until it serves, and stop it when done.

Example:
    >>> import rlmesh.numpy
    >>> from rlmesh.launch import launch_server
    >>> with launch_server("CartPole-v1", num_envs=4, servers=2) as server:
    ...     with rlmesh.numpy.RemoteVectorEnv(server.addresses) as env:  # 4 lanes over 2 processes
    ...         observations, infos = env.reset(seed=0)
    >>> observations.shape
    (4, 4)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_POLL_S = 0.02
_STOP_TIMEOUT_S = 10.0
_STDERR_TAIL = 4000


def wait_for_ready_file(
    path: str | os.PathLike[str],
    *,
    timeout: float,
    failed: Callable[[], str | None] = lambda: None,
    what: str = "the server",
) -> list[str]:
    """Wait until ``path`` holds one address per line; returns the addresses.

    Args:
        path: The ready file the server writes (atomically) once it serves.
        timeout: Seconds to wait.
        failed: Called while waiting; returns a description of why the server cannot become
            ready (it exited, the container died) or None while it may still.
        what: How to name the server in errors.

    Raises:
        RuntimeError: ``failed`` reported a failure.
        TimeoutError: the file did not appear within ``timeout``.
    """
    ready = Path(path)
    deadline = time.monotonic() + timeout
    while True:
        if ready.is_file():
            addresses = ready.read_text().split()
            if addresses:
                return addresses
        problem = failed()
        if problem is not None:
            raise RuntimeError(f"{what} failed before it was ready: {problem}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} was not ready within {timeout:g}s")
        time.sleep(_POLL_S)


class LaunchedServer:
    """A running ``rlmesh serve`` process group; a context manager that stops it on exit.

    Attributes:
        addresses: Every endpoint it serves, in lane order (one per ``--servers``).
        process: The ``rlmesh serve`` process (with ``servers > 1``, the one supervising the rest).
    """

    def __init__(self, process: subprocess.Popen[bytes], addresses: list[str], stderr: IO[bytes]) -> None:
        self.process = process
        self.addresses = addresses
        self._stderr = stderr

    @property
    def address(self) -> str:
        """The first (with one server, the only) endpoint address."""
        return self.addresses[0]

    def stderr_tail(self) -> str:
        """The last lines the server wrote to stderr."""
        if self._stderr.closed:
            return ""
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-_STDERR_TAIL:]

    def kill(self) -> None:
        """Kill the server processes at once (SIGKILL), as a crash would."""
        self._signal(signal.SIGKILL)
        self.process.wait(_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop the server processes (SIGTERM, then SIGKILL after a grace period). Idempotent."""
        if self.process.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.process.wait()
        self._signal(signal.SIGKILL)  # children of a supervisor that died first
        if not self._stderr.closed:
            self._stderr.close()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def __enter__(self) -> LaunchedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LaunchedServer(pid={self.process.pid}, addresses={self.addresses})"


def launch_server(
    source: str,
    *args: str,
    num_envs: int | None = None,
    servers: int = 1,
    address: str = "tcp://127.0.0.1:0",
    pythonpath: Sequence[str | os.PathLike[str]] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> LaunchedServer:
    """Run ``python -m rlmesh serve SOURCE`` in a new process group and wait until it serves.

    Args:
        source: What to serve (a Gymnasium id or ``module:callable``).
        *args: More ``rlmesh serve`` flags (``"--kwarg", "key=1"``, ...).
        num_envs: Serve a vector env with this many lanes in total.
        servers: Split the lanes over this many server processes.
        address: Where to bind (port 0 picks free ports).
        pythonpath: Folders prepended to the server's ``PYTHONPATH`` (for ``module:callable``).
        env: The server's environment (default: this process's).
        timeout: Seconds to wait for it to serve.

    Returns:
        The running server; use it as a context manager, or call :meth:`LaunchedServer.stop`.

    Raises:
        RuntimeError: the server exited before it served (the message carries its stderr).
        TimeoutError: it did not serve within ``timeout`` (stopped, stderr in the message).
    """
    command = [sys.executable, "-m", "rlmesh", "serve", source, "--address", address, "--quiet", "--exit-with-parent"]
    command += args
    if num_envs is not None:
        command += ["--num-envs", str(num_envs)]
    if servers != 1:
        command += ["--servers", str(servers)]
    environment = dict(os.environ if env is None else env)
    if pythonpath:
        parts = [*(str(p) for p in pythonpath), environment.get("PYTHONPATH", "")]
        environment["PYTHONPATH"] = os.pathsep.join(p for p in parts if p)
    with tempfile.TemporaryDirectory(prefix="rlmesh-launch-") as folder:
        ready = Path(folder) / "ready"
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the LaunchedServer, closed by stop()
        process = subprocess.Popen(
            [*command, "--ready-file", str(ready)],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        server = LaunchedServer(process, [], stderr)

        def failed() -> str | None:
            code = process.poll()
            return None if code is None else f"exit code {code}; stderr:\n{server.stderr_tail()}"

        try:
            server.addresses = wait_for_ready_file(ready, timeout=timeout, failed=failed, what=f"rlmesh serve {source}")
        except TimeoutError as error:
            tail = server.stderr_tail()
            server.stop()
            raise TimeoutError(f"{error}; stderr:\n{tail}") from None
        except BaseException:
            server.stop()
            raise
    return server


def watch_parent(on_exit: Callable[[], None], interval: float = 0.25) -> threading.Thread:
    """Call ``on_exit`` once this process's parent has exited (it was reparented), from a daemon thread.

    A server started for one program (``launch_server``, ``rlmesh serve --servers``) stops
    with it, even when the program was killed and could not stop it.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        on_exit()

    thread = threading.Thread(target=watch, name="rlmesh-parent-watch", daemon=True)
    thread.start()
    return thread


def split_lanes(num_envs: int | None, servers: int) -> list[int | None]:
    """Lanes per server when ``num_envs`` lanes are split over ``servers`` processes.

    Raises:
        ValueError: fewer lanes than servers, or ``servers`` below 1.
    """
    if servers < 1:
        raise ValueError(f"--servers must be at least 1, got {servers}")
    if num_envs is None:
        return [None] * servers
    if num_envs < servers:
        raise ValueError(f"--num-envs {num_envs} cannot be split over {servers} servers; give each at least one lane")
    return [num_envs // servers + (i < num_envs % servers) for i in range(servers)]


def server_addresses(address: str, servers: int) -> list[str]:
    """One bind address per server: port 0 for all, consecutive ports, or numbered socket paths."""
    from rlmesh.addresses import resolve_address

    resolved = resolve_address(address)
    if resolved.startswith("tcp://"):
        host, _, port = resolved[len("tcp://") :].rpartition(":")
        if port == "0":
            return [resolved] * servers
        return [f"tcp://{host}:{int(port) + i}" for i in range(servers)]
    return [f"{resolved}.{i}" for i in range(servers)]


def serve_split(
    argv: Sequence[str],
    *,
    num_envs: int | None,
    servers: int,
    address: str,
    ready_file: str | None,
    quiet: bool,
    exit_with_parent: bool = False,
) -> int:
    """Run ``servers`` ``rlmesh serve`` processes that share the lanes, until SIGTERM/SIGINT or one exits.

    ``argv`` holds the other ``rlmesh serve`` arguments (the source and flags), passed to
    every server. The ready file lists every address, one per line, in lane order. With
    ``exit_with_parent``, the servers also stop when this process's parent exits.

    Returns:
        0 after a requested stop, 1 when a server exited on its own.
    """
    counts = split_lanes(num_envs, servers)
    binds = server_addresses(address, servers)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if exit_with_parent:
        watch_parent(stop.set)
    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="rlmesh-serve-") as folder:
        try:
            for i, (count, bind) in enumerate(zip(counts, binds, strict=True)):
                lanes = [] if count is None else ["--num-envs", str(count)]
                command = [sys.executable, "-m", "rlmesh", "serve", *argv, *lanes, "--address", bind]
                command += ["--ready-file", f"{folder}/ready-{i}", "--quiet", "--exit-with-parent"]
                children.append(subprocess.Popen(command, stdin=subprocess.DEVNULL))
            addresses = []
            for i, child in enumerate(children):
                exited = lambda child=child: None if child.poll() is None else f"exit code {child.returncode}"
                ready = f"{folder}/ready-{i}"
                addresses += wait_for_ready_file(ready, timeout=120.0, failed=exited, what=f"server {i}")
            if ready_file:
                temporary = f"{ready_file}.tmp"
                Path(temporary).write_text("".join(f"{a}\n" for a in addresses))
                os.replace(temporary, ready_file)
            if not quiet:
                each = "one env per client" if num_envs is None else f"{num_envs} lanes in all"
                print(f"rlmesh: {servers} servers ({each}) on {' '.join(addresses)}", flush=True)
            while not stop.wait(0.2):
                if any(child.poll() is not None for child in children):
                    print("rlmesh serve: error: a server process exited; stopping the others", file=sys.stderr)
                    return 1
            return 0
        finally:
            for child in children:
                if child.poll() is None:
                    child.terminate()
            for child in children:
                try:
                    child.wait(_STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()


def without_options(argv: Sequence[str], valued: Sequence[str], flags: Sequence[str] = ()) -> list[str]:
    """``argv`` without the ``valued`` options (``--name value`` or ``--name=value``) and ``flags``."""
    kept: list[str] = []
    skip = False
    for item in argv:
        if skip:
            skip = False
            continue
        name = item.split("=", 1)[0]
        if name in flags:
            continue
        if name in valued:
            skip = "=" not in item
            continue
        kept.append(item)
    return kept


__all__ = ["LaunchedServer", "launch_server", "serve_split", "split_lanes", "wait_for_ready_file"]
