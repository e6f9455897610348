"""ZeroMQ plumbing shared by server and client: sockets, aligned receives, liveness."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.backend import Socket as _BackendSocket

from rlmesh.codec import DEFAULT_LIMITS, Header, Limits, decode_body, parse_header
from rlmesh.errors import ProtocolError
from rlmesh.tensor import Tensor, aligned_empty

# ZeroMQ heartbeats let both ends notice a peer that vanished without closing its socket.
HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
_RCVMORE = int(zmq.RCVMORE)
_SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
# Frames under this size are copied into ZeroMQ (pyzmq's own threshold): a zero-copy send
# or receive builds a Frame object, which costs more than copying a small message.
COPY_BELOW_BYTES = 1 << 16
# pyzmq's Socket methods wrap the Cython ones with enum conversions and argument handling
# that cost more than the call itself for a small message; the per-step paths call these.
_send = _BackendSocket.send
_recv = _BackendSocket.recv
_get = _BackendSocket.get


def shared_context() -> zmq.Context:
    """The process-wide ZeroMQ context."""
    return zmq.Context.instance()


def configure(socket: zmq.Socket) -> zmq.Socket:
    """Apply the options every rlmesh socket uses."""
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_INTERVAL_MS)
    socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
    socket.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    return socket


def send_frames(socket: zmq.Socket, frames: Sequence[Any], flags: int = 0) -> None:
    """Send ``frames`` as one message; small frames are copied, large ones sent zero-copy.

    Raises:
        zmq.Again: with ``flags=NOBLOCK``, when the peer's queue is full (nothing was sent).
        zmq.ZMQError: as :meth:`zmq.Socket.send` does.
    """
    last = len(frames) - 1
    more = flags | _SNDMORE
    for index, frame in enumerate(frames):
        size = len(frame) if type(frame) is bytes else memoryview(frame).nbytes
        _send(socket, frame, more if index < last else flags, size < COPY_BELOW_BYTES, False)


def recv_frames(socket: zmq.Socket, flags: int = 0, copied: int = 2) -> list[Any]:
    """Receive one whole message: its first ``copied`` frames as bytes, the rest as zero-copy Frames.

    Raises:
        zmq.Again: with ``flags=NOBLOCK``, when no message is waiting.
    """
    frames = [_recv(socket, flags, True, False)]
    while _get(socket, _RCVMORE):
        frames.append(_recv(socket, 0, len(frames) < copied, False))
    return frames


def recv_frame(socket: zmq.Socket, flags: int = 0) -> bytes:
    """Receive one frame as bytes (the first of a message whose rest :func:`receive_tensors` reads)."""
    return _recv(socket, flags, True, False)


def readable(socket: zmq.Socket) -> bool:
    """Whether a message waits on ``socket`` (also lets ZeroMQ process pending I/O commands)."""
    return bool(_get(socket, _EVENTS) & _POLLIN)


def drain(socket: zmq.Socket) -> int:
    """Discard the remaining frames of a partly read message; returns how many."""
    count = 0
    while _get(socket, _RCVMORE):
        _recv(socket, 0, False, False)  # zero-copy: a large frame is dropped, not copied
        count += 1
    return count


def receive_tensors(socket: zmq.Socket, header: Header) -> list[Tensor]:
    """Receive the tensor frames announced by ``header`` straight into aligned buffers.

    Raises:
        ProtocolError: when a frame is missing, has the wrong size, or extra frames follow
            (the rest of the message is drained first, so the socket stays usable).
    """
    tensors = []
    for shape, dtype in header.shapes:
        if not _get(socket, _RCVMORE):
            raise ProtocolError(f"header announces {len(header.shapes)} tensor frames, got {len(tensors)}")
        array = aligned_empty(shape, dtype)
        if array.nbytes:
            received = socket.recv_into(array.reshape(-1).view("u1"))
        else:
            received = len(_recv(socket, 0, True, False))
        if received != array.nbytes:
            drain(socket)
            raise ProtocolError(
                f"tensor frame of {received} bytes does not match shape {shape} {dtype.name} ({array.nbytes} bytes)"
            )
        tensors.append(Tensor._wrap(array))
    if drain(socket):
        raise ProtocolError(f"more frames than the {len(header.shapes)} tensors the header announces")
    return tensors


def receive_message(
    socket: zmq.Socket,
    first_frame: bytes,
    decode_leaf: Callable[[Tensor], Any] | None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Header, Any]:
    """Finish receiving a message whose header frame was read already, and decode it.

    Raises:
        ProtocolError: for a malformed message; its remaining frames are drained first, so
            the next message starts clean.
    """
    try:
        header = parse_header(first_frame, limits)
        tensors = receive_tensors(socket, header)
    except Exception as error:
        drain(socket)
        if isinstance(error, ProtocolError):
            raise
        raise ProtocolError(f"malformed message: {type(error).__name__}: {error}") from None
    return header, decode_body(header.body, tensors, decode_leaf, limits)
