"""Run the env server in a hardened container, wait for it, remove it, reap orphans.

The container has no network (``network_mode="none"``) and serves on a unix socket in a
private host directory bind-mounted at ``/run/rlmesh``. Its root filesystem is read-only
(a small tmpfs on ``/tmp``), all capabilities are dropped, ``no-new-privileges`` is set, it
runs as a non-root user (65534:65534 when the host process is root, the host's own uid:gid
otherwise), and pids and memory are limited. Labels name rlmesh and the owning process, so
containers left by a process that died are removed the next time a sandbox starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmesh.errors import SandboxError
from rlmesh.sandbox._docker import docker_module

__all__ = [
    "LABEL_SANDBOX",
    "SandboxStartupError",
    "StartedContainer",
    "container_logs",
    "owner_labels",
    "reap_orphans",
    "remove_sandbox",
    "start_container",
]

_log = logging.getLogger("rlmesh.sandbox")

LABEL_SANDBOX = "rlmesh.sandbox"
LABEL_PID = "rlmesh.owner.pid"
LABEL_HOST = "rlmesh.owner.host"
LABEL_START = "rlmesh.owner.start"
LABEL_DIR = "rlmesh.socket-dir"
LABEL_SOURCE = "rlmesh.source"
MOUNT = "/run/rlmesh"
SOCKET_NAME = "env.sock"
READY_NAME = "ready"
DIR_PREFIX = "rlmesh-sandbox-"
NOBODY = 65534
LOG_LINES = 50


class SandboxStartupError(SandboxError):
    """The sandbox container exited or did not become ready; carries its last log lines."""


@dataclass(frozen=True)
class StartedContainer:
    """A running sandbox container.

    Attributes:
        container_id: Docker container id.
        socket_dir: Host directory bind-mounted at ``/run/rlmesh``.
        address: Host-side ``ipc://`` address of the env server.
    """

    container_id: str
    socket_dir: str
    address: str


def _process_start(pid: int) -> str:
    """Start time of ``pid`` in clock ticks since boot ('' where /proc is unavailable)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[19]


def owner_labels() -> dict[str, str]:
    """Labels naming rlmesh and the owning process (pid, start time, host)."""
    pid = os.getpid()
    return {
        LABEL_SANDBOX: "1",
        LABEL_PID: str(pid),
        LABEL_START: _process_start(pid),
        LABEL_HOST: socket.gethostname(),
    }


def _owner_alive(labels: dict[str, str]) -> bool:
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = labels.get(LABEL_START, "")
    return not started or _process_start(pid) in ("", started)


def _safe_rmtree(path: str | None) -> None:
    if not path:
        return
    p = Path(path)
    if p.name.startswith(DIR_PREFIX) and p.parent == Path(tempfile.gettempdir()):
        shutil.rmtree(p, ignore_errors=True)


def reap_orphans(client: Any) -> list[str]:
    """Remove sandbox containers (and socket dirs) whose owning process on this host died.

    Returns:
        The ids of the containers removed.
    """
    docker = docker_module()
    host = socket.gethostname()
    removed = []
    try:
        containers = client.containers.list(all=True, filters={"label": f"{LABEL_SANDBOX}=1"})
    except docker.errors.APIError as exc:
        _log.warning("could not list sandbox containers to reap: %s", exc)
        return removed
    for container in containers:
        labels = container.labels or {}
        if labels.get(LABEL_HOST) != host or _owner_alive(labels):
            continue
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True, v=True)
            removed.append(container.id)
            _log.info("reaped orphaned sandbox container %s", container.short_id)
        _safe_rmtree(labels.get(LABEL_DIR))
    return removed


def container_logs(client: Any, container_id: str, lines: int = LOG_LINES) -> str:
    """The container's last ``lines`` log lines (stdout and stderr), or a note if unavailable."""
    try:
        raw = client.api.logs(container_id, stdout=True, stderr=True, tail=lines)
    except Exception as exc:
        return f"(logs unavailable: {exc})"
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return text.rstrip() or "(no output)"


def remove_sandbox(client: Any, container_id: str | None, socket_dir: str | None) -> None:
    """Force-remove the container and delete its socket directory; never raises."""
    if container_id:
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except Exception as exc:
            if getattr(getattr(exc, "response", None), "status_code", None) != 404:
                _log.warning("could not remove sandbox container %s: %s", container_id, exc)
    _safe_rmtree(socket_dir)


def _private_dir() -> tuple[str, str]:
    """Create the socket directory; return it and the container user that may write it."""
    path = tempfile.mkdtemp(prefix=DIR_PREFIX)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
        return path, f"{NOBODY}:{NOBODY}"
    return path, f"{os.getuid()}:{os.getgid()}"


def start_container(
    client: Any,
    image: str,
    serve_args: list[str],
    *,
    source: str,
    mem_limit: str | int,
    pids_limit: int,
    timeout: float,
) -> StartedContainer:
    """Start ``rlmesh serve`` in a hardened container and wait for its ready file.

    Args:
        client: A ``docker.DockerClient``.
        image: The sandbox image tag.
        serve_args: Arguments after ``rlmesh serve <address options>``: the source target,
            vector options and ``--kwarg`` options.
        source: The user's source string, for labels and messages.
        mem_limit: Docker memory limit (``"2g"`` or bytes).
        pids_limit: Maximum number of processes in the container.
        timeout: Seconds to wait for the server to be ready.

    Raises:
        SandboxStartupError: The container exited or was not ready in time; the message holds
            its last log lines. The container and directory are removed first.
    """
    socket_dir, user = _private_dir()
    container_id: str | None = None
    try:
        command = [
            "serve",
            *serve_args[:1],
            "--address",
            f"ipc://{MOUNT}/{SOCKET_NAME}",
            "--ready-file",
            f"{MOUNT}/{READY_NAME}",
            *serve_args[1:],
        ]
        labels = {**owner_labels(), LABEL_DIR: socket_dir, LABEL_SOURCE: source[:200]}
        container = client.containers.run(
            image,
            command=command,
            detach=True,
            network_mode="none",
            read_only=True,
            tmpfs={"/tmp": "rw,nosuid,nodev,size=64m,mode=1777"},
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            user=user,
            pids_limit=pids_limit,
            mem_limit=mem_limit,
            labels=labels,
            volumes={socket_dir: {"bind": MOUNT, "mode": "rw"}},
            environment={"HOME": "/tmp"},
            working_dir="/tmp",
            init=True,
        )
        container_id = container.id
        _wait_ready(client, container, socket_dir, source, timeout)
        return StartedContainer(container_id, socket_dir, f"ipc://{socket_dir}/{SOCKET_NAME}")
    except BaseException:
        remove_sandbox(client, container_id, socket_dir)
        raise


def _wait_ready(client: Any, container: Any, socket_dir: str, source: str, timeout: float) -> None:
    ready = Path(socket_dir) / READY_NAME
    deadline = time.monotonic() + timeout
    next_check = 0.0
    while True:
        if ready.is_file() and ready.read_text().strip():
            return
        now = time.monotonic()
        if now >= next_check:
            container.reload()
            if container.status in ("exited", "dead"):
                code = container.attrs.get("State", {}).get("ExitCode")
                logs = container_logs(client, container.id)
                raise SandboxStartupError(
                    f"sandbox container for {source!r} exited with status {code} before the "
                    f"server was ready; last {LOG_LINES} log lines:\n{logs}"
                )
            next_check = now + 0.5
        if now >= deadline:
            logs = container_logs(client, container.id)
            raise SandboxStartupError(
                f"sandbox server for {source!r} was not ready within {timeout:g} s "
                f"(connect_timeout_seconds); last {LOG_LINES} log lines:\n{logs}"
            )
        time.sleep(0.05)
