"""Forward an endpoint's frames unchanged between a TCP address and another endpoint.

A sandbox serves on a unix socket that only its own node can reach; the relay exposes it on the
node's TCP address. Each client gets its own upstream connection, so the upstream server still
sees one session per client, and frames are forwarded as bytes (no decode, no copy into Python
objects beyond what pyzmq does).
"""

from __future__ import annotations

import threading

import zmq

from rlmesh.security import EndpointSecurity
from rlmesh.server import ServeOptions
from rlmesh.transport import configure, shared_context

_POLL_MS = 100


class FrameRelay:
    """A ROUTER on ``address`` whose clients each get a DEALER connected to ``upstream``.

    Args:
        address: Where to bind (``tcp://host:0`` picks a port).
        upstream: The endpoint the frames go to (``ipc:///...`` or ``tcp://...``).
        options: Only the security settings are used: CURVE keys for ``address``, or
            ``allow_insecure`` for a non-loopback address without them (refused otherwise).
    """

    def __init__(self, address: str, upstream: str, *, options: ServeOptions | None = None) -> None:
        options = options or ServeOptions()
        self.upstream = upstream
        self._security = EndpointSecurity.for_endpoint(
            address,
            curve_secret_key=options.curve_secret_key,
            curve_authorized_keys=options.curve_authorized_keys,
            allow_insecure=options.allow_insecure,
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._front = configure(shared_context().socket(zmq.ROUTER))
        self._security.apply(self._front)
        try:
            self._front.bind(address)
        except zmq.ZMQError as error:
            self._front.close()
            self._security.close()
            raise OSError(f"cannot bind {address}: {error}") from None
        self.address: str = self._front.getsockopt_string(zmq.LAST_ENDPOINT)

    def start(self) -> FrameRelay:
        """Relay in a background thread; returns self."""
        self._thread = threading.Thread(target=self._loop, name=f"rlmesh-relay {self.address}", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        """Stop relaying and close every socket; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        elif not self._front.closed:
            self._front.close(linger=0)
        self._security.close()

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._front, zmq.POLLIN)
        backs: dict[bytes, zmq.Socket] = {}
        owners: dict[zmq.Socket, bytes] = {}
        try:
            while not self._stop.is_set():
                for socket, _ in poller.poll(_POLL_MS):
                    if socket is self._front:
                        identity, *frames = self._front.recv_multipart(copy=False)
                        key = identity.bytes
                        back = backs.get(key)
                        if back is None:
                            back = configure(shared_context().socket(zmq.DEALER))
                            back.connect(self.upstream)
                            backs[key], owners[back] = back, key
                            poller.register(back, zmq.POLLIN)
                        back.send_multipart(frames, copy=False)
                    else:
                        frames = socket.recv_multipart(copy=False)
                        self._front.send_multipart([owners[socket], *frames], copy=False)
        finally:
            for back in backs.values():
                back.close(linger=0)
            self._front.close(linger=0)
