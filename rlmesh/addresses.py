"""Endpoint address parsing: ``tcp://h:p``, ``h:p``, a bare port, ``unix:///path``, ``ipc://``."""

from __future__ import annotations

import errno
import os
import socket
import stat

DEFAULT_HOST = "127.0.0.1"
TRANSPORTS = ("tcp", "ipc")


def resolve_address(
    address: str | int | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    path: str | os.PathLike[str] | None = None,
    transport: str | None = None,
) -> str:
    """Return a ZeroMQ endpoint (``tcp://host:port`` or ``ipc:///path``) from any accepted form.

    Args:
        address: ``"tcp://127.0.0.1:5555"``, ``"127.0.0.1:5555"``, ``5555`` or ``"5555"``
            (loopback), ``"unix:///tmp/env.sock"`` or ``"ipc:///tmp/env.sock"``.
        host: TCP host used when ``address`` is omitted (default 127.0.0.1).
        port: TCP port used when ``address`` is omitted (0 picks a free port when binding).
        path: Unix socket path used when ``address`` is omitted.
        transport: ``"tcp"`` or ``"ipc"`` (alias ``"unix"``); inferred when omitted.

    Raises:
        ValueError: for conflicting or malformed arguments, naming the value.
    """
    if transport is not None:
        transport = "ipc" if transport == "unix" else transport
        if transport not in TRANSPORTS:
            raise ValueError(f"transport {transport!r} is not one of 'tcp', 'ipc', 'unix'")
    if address is not None:
        if host is not None or port is not None or path is not None:
            raise ValueError("pass either address or host/port/path, not both")
        endpoint = _parse(address)
        if transport is not None and not endpoint.startswith(transport + "://"):
            raise ValueError(f"address {address!r} does not use transport {transport!r}")
        return endpoint
    if path is not None:
        if host is not None or port is not None or transport == "tcp":
            raise ValueError("path selects a unix socket; do not combine it with host/port/tcp")
        return f"ipc://{os.fspath(path)}"
    if transport == "ipc":
        raise ValueError("transport 'ipc' needs a path")
    if port is None:
        raise ValueError("no address: pass address=..., port=..., or path=...")
    return f"tcp://{host or DEFAULT_HOST}:{_check_port(port, port)}"


def _parse(address: str | int) -> str:
    if isinstance(address, int) and not isinstance(address, bool):
        return f"tcp://{DEFAULT_HOST}:{_check_port(address, address)}"
    if not isinstance(address, str) or not address:
        raise ValueError(f"address must be a non-empty string or a port number, got {address!r}")
    if address.startswith("unix://"):
        return "ipc://" + address[len("unix://") :]
    if address.startswith("ipc://"):
        if len(address) == len("ipc://"):
            raise ValueError(f"address {address!r} has no socket path")
        return address
    if address.startswith("tcp://"):
        rest = address[len("tcp://") :]
    elif "://" in address:
        scheme = address.split("://", 1)[0]
        raise ValueError(
            f"address {address!r} uses scheme {scheme!r}; expected tcp://host:port, host:port, "
            "a port number, unix:///path or ipc:///path"
        )
    else:
        rest = address
    if rest.isdigit():
        return f"tcp://{DEFAULT_HOST}:{_check_port(int(rest), address)}"
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return f"tcp://{host}:{_check_port(int(port_text), address)}"


def _check_port(port: int, shown: object) -> int:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port in {shown!r} must be an integer in 0..65535")
    return port


def ipc_path(endpoint: str) -> str | None:
    """The filesystem path of an ``ipc://`` endpoint, else None."""
    return endpoint[len("ipc://") :] if endpoint.startswith("ipc://") else None


def claim_ipc_path(path: str) -> None:
    """Make ``path`` free for a new unix socket, refusing to take over a live one.

    A socket file that nothing answers on (left by a dead server) is removed.

    Raises:
        OSError: a server answers on ``path`` (address in use), or ``path`` is not a socket.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"cannot bind unix://{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # stale: nobody listens
    except OSError as error:
        raise OSError(
            errno.EADDRINUSE, f"cannot bind unix://{path}: cannot tell whether it is in use ({error})"
        ) from None
    else:
        raise OSError(errno.EADDRINUSE, f"cannot bind unix://{path}: address in use (a live server answers there)")
    finally:
        probe.close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) pair of ``path``, or None when it does not exist."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def remove_ipc_file(path: str, identity: tuple[int, int] | None) -> None:
    """Remove the socket file at ``path`` only if it is still the one with ``identity``."""
    if identity is not None and file_identity(path) == identity:
        try:
            os.unlink(path)
        except OSError:
            pass
