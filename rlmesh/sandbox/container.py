"""Run the env server in a hardened container, wait for it, remove it, reap orphans.

The container has no network (``network_mode="none"``) and serves on a unix socket in a
private host directory bind-mounted at ``/run/rlmesh``. That directory (mode 0700) belongs
to the user the container runs as: the caller's own uid:gid, or, when the caller is root, a
uid:gid that no host account or group uses, so no other local account (``nobody``
included) can connect to, list or change it. The root filesystem is read-only (a small
tmpfs on ``/tmp``), all capabilities are dropped, ``no-new-privileges`` is set, and CPU,
memory (swap equal to memory) and pids are limited. Labels name rlmesh and the owning
process, so containers left by a process that died are removed the next time a sandbox
starts.
"""

from __future__ import annotations

import contextlib
import grp
import logging
import os
import pwd
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmesh.errors import SandboxError
from rlmesh.sandbox._docker import docker_module
from rlmesh.sandbox.options import SandboxOptions

__all__ = [
    "LABEL_SANDBOX",
    "SandboxStartupError",
    "StartedContainer",
    "container_logs",
    "owner_labels",
    "reap_orphans",
    "remove_sandbox",
    "sandbox_user",
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
# Searched upwards for an id that no host account or group has (used when the caller is root).
UNUSED_ID_START = 1_900_000_000
LOG_LINES = 50
REMOVAL_WAIT_SECONDS = 30.0
CONTAINER_POLL_SECONDS = 0.5


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
            status = _status_code(exc)
            if status == 409:  # a removal is already under way: wait for it to finish
                _wait_gone(client, container_id)
            elif status != 404:
                _log.warning("could not remove sandbox container %s: %s", container_id, exc)
    _safe_rmtree(socket_dir)


def _status_code(exc: BaseException) -> int | None:
    return getattr(getattr(exc, "response", None), "status_code", None)


def _wait_gone(client: Any, container_id: str, timeout: float = REMOVAL_WAIT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(container_id)
        except Exception as exc:
            if _status_code(exc) == 404:
                return
        time.sleep(0.2)
    _log.warning("sandbox container %s was still being removed after %g s", container_id, timeout)


def _id_unused(number: int) -> bool:
    try:
        pwd.getpwuid(number)
    except KeyError:
        try:
            grp.getgrgid(number)
        except KeyError:
            return True
    return False


def sandbox_user() -> tuple[int, int]:
    """The uid and gid the container runs as: the caller's, or unused ones when it is root."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid()
    number = UNUSED_ID_START
    while not _id_unused(number):
        number += 1
    return number, number


def _private_dir(uid: int, gid: int) -> str:
    """Create the socket directory, mode 0700, owned by the container's user."""
    path = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-")  # the pid tells owners apart
    try:
        os.chmod(path, 0o700)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.chown(path, uid, gid)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def _check_cpus(client: Any, limits: SandboxOptions) -> None:
    try:
        available = int(client.info().get("NCPU") or 0)
    except Exception:
        return  # the engine will say it
    if available and limits.cpus > available:
        raise ValueError(
            f"SandboxOptions.cpus={limits.cpus:g} exceeds the {available} CPUs of the Docker engine; "
            f"pass at most {available}"
        )


def start_container(
    client: Any,
    image: str,
    serve_args: list[str],
    *,
    source: str,
    limits: SandboxOptions,
    timeout: float,
) -> StartedContainer:
    """Start ``rlmesh serve`` in a hardened container and wait for its ready file.

    Args:
        client: A ``docker.DockerClient``.
        image: The sandbox image tag.
        serve_args: Arguments after ``rlmesh serve <address options>``: the source target,
            vector options and ``--kwarg`` options.
        source: The user's source string, for labels and messages.
        limits: CPU, memory and pids limits.
        timeout: Seconds to wait for the server to be ready.

    Raises:
        ValueError: ``limits.cpus`` exceeds the engine's CPUs.
        SandboxStartupError: The container exited or was not ready in time; the message holds
            its last log lines. The container and directory are removed first.
    """
    _check_cpus(client, limits)
    uid, gid = sandbox_user()
    socket_dir = _private_dir(uid, gid)
    container_id: str | None = None
    try:
        command = [
            "serve",
            *serve_args[:1],
            "--address",
            f"ipc://{MOUNT}/{SOCKET_NAME}",
            "--ready-file",
            f"{MOUNT}/{READY_NAME}",
            "--debug",  # a failing env factory's traceback goes to the container log
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
            user=f"{uid}:{gid}",
            labels=labels,
            volumes={socket_dir: {"bind": MOUNT, "mode": "rw"}},
            environment={"HOME": "/tmp"},
            working_dir="/tmp",
            init=True,
            **limits.docker_limits(),
        )
        container_id = container.id
        _wait_ready(client, container, socket_dir, source, timeout)
        return StartedContainer(container_id, socket_dir, f"ipc://{socket_dir}/{SOCKET_NAME}")
    except BaseException:
        remove_sandbox(client, container_id, socket_dir)
        raise


def _wait_ready(client: Any, container: Any, socket_dir: str, source: str, timeout: float) -> None:
    from rlmesh.launch import wait_for_ready_file

    next_check = 0.0

    def exited() -> str | None:
        nonlocal next_check
        now = time.monotonic()
        if now < next_check:
            return None
        next_check = now + CONTAINER_POLL_SECONDS
        container.reload()
        if container.status in ("exited", "dead"):
            return f"its container exited with status {container.attrs.get('State', {}).get('ExitCode')}"
        return None

    what = f"the sandbox server for {source!r}"
    try:
        wait_for_ready_file(Path(socket_dir) / READY_NAME, timeout=timeout, failed=exited, what=what)
    except (RuntimeError, TimeoutError) as exc:
        hint = " (connect_timeout_seconds)" if isinstance(exc, TimeoutError) else ""
        logs = container_logs(client, container.id)
        raise SandboxStartupError(f"{exc}{hint}; last {LOG_LINES} log lines:\n{logs}") from None
