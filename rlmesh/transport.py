"""ZeroMQ plumbing shared by server and client: sockets, aligned receives, liveness."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq

from rlmesh.codec import DEFAULT_LIMITS, Header, Limits, decode_body, parse_header
from rlmesh.errors import ProtocolError
from rlmesh.tensor import Tensor, aligned_empty

# ZeroMQ heartbeats let both ends notice a peer that vanished without closing its socket.
HEARTBEAT_INTERVAL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000
_RCVMORE = int(zmq.RCVMORE)


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


def drain(socket: zmq.Socket) -> int:
    """Discard the remaining frames of a partly read message; returns how many."""
    count = 0
    while socket.getsockopt(_RCVMORE):
        socket.recv(copy=False)
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
        if not socket.getsockopt(_RCVMORE):
            raise ProtocolError(f"header announces {len(header.shapes)} tensor frames, got {len(tensors)}")
        array = aligned_empty(shape, dtype)
        if array.nbytes:
            received = socket.recv_into(array.reshape(-1).view("u1"))
        else:
            received = len(socket.recv(copy=True))
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
