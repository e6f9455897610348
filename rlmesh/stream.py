"""A tcp session's step stream: step records over a plain TCP connection beside ZeroMQ.

A ZeroMQ message crosses two I/O threads on each side, which is most of a round trip on
loopback (about 120 us where a plain TCP ping-pong takes 35 us). When a tcp endpoint serves
steps as fixed-size record frames (:class:`rlmesh.record.RecordFrames`) and CURVE is off, the
handshake offers a second connection that carries step requests as those records: the
client writes a request record, the session's worker reads it, steps and writes the reply,
each with one system call. A reply is framed (a length, a frame count, the frame lengths,
then the frames): one record frame, or the frames of an encoded message when no record
holds it (an error, a non-empty info). ZeroMQ keeps the handshake, liveness and every other
request, so semantics do not change.

The offer is a port and a random token (sent over the ZeroMQ handshake); a connection that
does not open with the token is closed. ``RLMESH_TCP_STREAM=0`` turns the stream off for a
process, clients and servers alike.
"""

from __future__ import annotations

import os
import secrets
import select
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from rlmesh.errors import ProtocolError
from rlmesh.shm.doorbell import Spinner, worker_spinner

ENVIRONMENT_SWITCH = "RLMESH_TCP_STREAM"
TOKEN_BYTES = 16
# How long a connecting client may take to send its token, and the longest a record may
# take to arrive once its first bytes have (a peer that stalls mid-record is dropped).
_PEER_STALL_S = 5.0
CONNECT_TIMEOUT_S = 2.0
_MIN_BUFFER = 1 << 16
# A reply's prefix: the bytes that follow it, and how many frames they hold.
_PREFIX = struct.Struct("<II")
_COUNT_LOCK = threading.Lock()


def enabled() -> bool:
    """Whether this process may use step streams: ``RLMESH_TCP_STREAM=0`` turns them off."""
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def tcp_host(endpoint: str) -> str | None:
    """The host of a ``tcp://host:port`` endpoint (brackets of an IPv6 host removed), else None."""
    if not endpoint.startswith("tcp://"):
        return None
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _ReadableCheck:
    """A zero-timeout readability test of one socket (call it), for spinning on it."""

    def __init__(self, connection: socket.socket) -> None:
        self._poll = select.poll()
        self._poll.register(connection, select.POLLIN)

    def __call__(self) -> bool:
        return bool(self._poll.poll(0))


def _nodelay(connection: socket.socket) -> socket.socket:
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return connection


def _read_exactly(connection: socket.socket, buffer: bytearray | memoryview) -> bool:
    """Fill ``buffer`` from ``connection`` (blocking, with its timeout); False when the peer closed or failed first."""
    view, got = memoryview(buffer), 0
    try:
        while got < len(buffer):
            count = connection.recv_into(view[got:], len(buffer) - got, socket.MSG_WAITALL)
            if count == 0:
                return False
            got += count
    except OSError:
        return False
    return True


def _read_waiting(connection: socket.socket, buffer: bytearray, stall_seconds: float) -> bool:
    """Fill ``buffer`` with a record that has started to arrive: one system call when it all has.

    A peer that stops mid-record fails the read after ``stall_seconds``.
    """
    try:
        got = connection.recv_into(buffer, len(buffer), socket.MSG_DONTWAIT)
    except BlockingIOError:
        got = 0
    except OSError:
        return False
    if got == len(buffer):
        return True
    if got == 0 and not _peer_waiting(connection):
        return False  # readable with nothing to read: the peer closed
    connection.settimeout(stall_seconds)
    try:
        return _read_exactly(connection, memoryview(buffer)[got:])
    finally:
        connection.settimeout(None)


def _peer_waiting(connection: socket.socket) -> bool:
    """Whether bytes wait on ``connection`` (False at end of stream)."""
    try:
        return len(connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)) == 1
    except BlockingIOError:
        return True  # nothing yet, but the stream is open
    except OSError:
        return False


def _write(connection: socket.socket, parts: Sequence[Any], timeout_seconds: float) -> bool:
    """Write ``parts`` in order: one system call when the socket buffer has room, else wait up to the timeout."""
    total = sum(memoryview(part).nbytes for part in parts)
    try:
        sent = connection.sendmsg(parts, [], socket.MSG_DONTWAIT)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False
    if sent == total:
        return True
    connection.settimeout(timeout_seconds)
    try:
        connection.sendall(memoryview(b"".join(parts))[sent:])
    except OSError:
        return False
    finally:
        connection.settimeout(None)
    return True


def _framed(frames: Sequence[Any]) -> list[Any]:
    """The parts of a framed reply: prefix, frame lengths, frames."""
    sizes = [memoryview(frame).nbytes for frame in frames]
    lengths = struct.pack(f"<{len(sizes)}I", *sizes)
    return [_PREFIX.pack(len(lengths) + sum(sizes), len(sizes)) + lengths, *frames]


class ServerStream:
    """The server side of one session's step stream, owned by the session's worker.

    Spins briefly for the next request after each reply while it is the process's only
    connected stream (see :meth:`should_spin`).

    Args:
        host: The interface the endpoint is bound to; the stream listens there.
        request_bytes: Size of a request record frame.
        reply_bytes: Size of a reply record frame.
        send_timeout_seconds: Drop the stream of a client that has not read a reply for this long.
    """

    _connected_count = 0  # connected streams in this process (their workers are threads)

    def __init__(self, host: str, request_bytes: int, reply_bytes: int, send_timeout_seconds: float) -> None:
        self.host = host
        self.send_timeout_seconds = send_timeout_seconds
        self._request = bytearray(request_bytes)
        self._reply_bytes = reply_bytes
        self._token = b""
        self._listener: socket.socket | None = None
        self._connection: socket.socket | None = None
        self.readable: _ReadableCheck | None = None  # set once the client connected
        self.spinner = Spinner(0.0)

    def offer(self, client_pid: Any = None) -> dict[str, Any] | None:
        """Listen for the session's client; the handshake offer (port, token), or None.

        ``client_pid``: the client's process id, from its handshake; a client in this very
        process competes for the GIL and the cores, so the worker does not spin for it.
        """
        self.close()  # a repeated handshake replaces the stream
        self.spinner = worker_spinner(client_pid)
        host = "" if self.host in ("*", "0.0.0.0") else self.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.bind((host, 0))
            listener.listen(1)
        except OSError:
            return None
        listener.setblocking(False)
        self._listener, self._token = listener, secrets.token_bytes(TOKEN_BYTES)
        return {"port": listener.getsockname()[1], "token": self._token}

    @property
    def fd(self) -> int | None:
        """What to poll: the listener until the client connected, then the connection."""
        active = self._connection or self._listener
        return None if active is None else active.fileno()

    @property
    def connected(self) -> bool:
        """Whether the client's connection is up."""
        return self._connection is not None

    def accept(self) -> None:
        """Take the client's connection when it opens with the token (else close it)."""
        listener = self._listener
        assert listener is not None
        try:
            connection, _ = listener.accept()
        except OSError:
            return
        connection.settimeout(_PEER_STALL_S)
        token = bytearray(TOKEN_BYTES)
        if not _read_exactly(connection, token) or not secrets.compare_digest(bytes(token), self._token):
            connection.close()
            return
        connection.settimeout(None)  # blocking; reads and writes bound their own waits
        listener.close()
        self._listener = None
        # One request is in flight at a time: small fixed buffers bound the kernel memory a
        # session holds, and a client that stops reading blocks a reply within a few steps.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, max(_MIN_BUFFER, 4 * self._reply_bytes))
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, max(_MIN_BUFFER, 4 * len(self._request)))
        self._connection = _nodelay(connection)
        with _COUNT_LOCK:
            ServerStream._connected_count += 1
        self.readable = _ReadableCheck(connection)

    def receive(self) -> bytearray | None:
        """The next request record (reused buffer); None when the client closed the stream."""
        connection = self._connection
        assert connection is not None
        if not _read_waiting(connection, self._request, _PEER_STALL_S):
            self.close()
            return None
        return self._request

    def send(self, frames: Sequence[Any]) -> bool:
        """Write a reply (a record frame, or an encoded message's frames); False when the client
        stopped reading (or left): the stream is closed then."""
        connection = self._connection
        if connection is None:
            return False
        if not _write(connection, _framed(frames), self.send_timeout_seconds):
            self.close()
            return False
        return True

    def should_spin(self) -> bool:
        """Whether to spin for the next request: only while this is the process's one connected stream.

        Workers of several streams spinning in one process would fight over the GIL.
        """
        return self.readable is not None and ServerStream._connected_count == 1

    def close(self) -> None:
        """Close the listener and the connection. Idempotent."""
        if self._connection is not None:
            with _COUNT_LOCK:
                ServerStream._connected_count -= 1
        for held in (self._listener, self._connection):
            if held is not None:
                held.close()
        self._listener = self._connection = None
        self.readable = None


class ClientStream:
    """The client side of a session's step stream: request records out, framed replies in."""

    def __init__(self, connection: socket.socket, reply_bytes: int) -> None:
        self._connection = connection
        self._buffer = bytearray(max(_MIN_BUFFER, _PREFIX.size + 4 + reply_bytes))
        self.readable = _ReadableCheck(connection)

    @classmethod
    def connect(cls, host: str, offer: Any, reply_bytes: int) -> ClientStream | None:
        """Connect to the stream a handshake ``offer``ed; None when it cannot be used."""
        if not isinstance(offer, dict):
            return None
        port, token = offer.get("port"), offer.get("token")
        if type(port) is not int or not isinstance(token, bytes) or len(token) != TOKEN_BYTES:
            return None
        try:
            connection = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        except OSError:
            return None
        try:
            connection.sendall(token)
            connection.settimeout(None)
        except OSError:
            connection.close()
            return None
        return cls(_nodelay(connection), reply_bytes)

    @property
    def fd(self) -> int:
        """The connection's descriptor, to poll for a reply."""
        return self._connection.fileno()

    def send(self, frame: bytes) -> bool:
        """Write a request record; False when the stream failed (it is closed then)."""
        try:
            self._connection.sendall(frame)
        except OSError:
            return False
        return True

    def receive(self, max_bytes: int, max_frames: int) -> list[memoryview] | None:
        """The frames of the reply that started to arrive (views of a buffer reused by the next
        reply); None when the server closed the stream.

        Raises:
            ProtocolError: a reply over ``max_bytes`` or ``max_frames``, or malformed (the
                stream is unusable afterwards: close it).
        """
        connection, buffer = self._connection, self._buffer
        try:
            try:
                got = connection.recv_into(buffer)
            except OSError:
                got = 0  # reset by a server that died: as closed
            if got == 0:
                return None
            connection.settimeout(_PEER_STALL_S)  # the rest is on its way: a stall is a failure
            if got < _PREFIX.size and not _read_exactly(connection, memoryview(buffer)[got : _PREFIX.size]):
                return None
            body, count = _PREFIX.unpack_from(buffer)
            if not 0 < count <= max_frames or body > max_bytes + 4 * count:
                raise ProtocolError(f"step stream reply of {body} bytes in {count} frames exceeds this client's limits")
            total = _PREFIX.size + body
            if total > len(buffer):
                buffer = self._buffer = buffer[:got] + bytearray(total - got)
            if got < total and not _read_exactly(connection, memoryview(buffer)[max(got, _PREFIX.size) : total]):
                return None
        finally:
            connection.settimeout(None)
        sizes = struct.unpack_from(f"<{count}I", buffer, _PREFIX.size)
        offset = _PREFIX.size + 4 * count
        if offset + sum(sizes) != total:
            raise ProtocolError("malformed step stream reply: its frame lengths do not add up")
        frames, view = [], memoryview(buffer)
        for size in sizes:
            frames.append(view[offset : offset + size])
            offset += size
        return frames

    def close(self) -> None:
        """Close the connection. Idempotent."""
        self._connection.close()


__all__ = ["ENVIRONMENT_SWITCH", "ClientStream", "ServerStream", "enabled", "tcp_host"]
