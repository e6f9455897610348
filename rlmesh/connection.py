"""The client end of one session: a DEALER socket, request/reply matching, liveness."""

from __future__ import annotations

import functools
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from rlmesh import protocol as p
from rlmesh import shm, stream
from rlmesh.addresses import ipc_path
from rlmesh.codec import DEFAULT_LIMITS, Limits, decode_frames, encode_message
from rlmesh.errors import EndpointConnectionError, EndpointTimeoutError, ProtocolError
from rlmesh.load import MACHINE_LOAD
from rlmesh.record import RecordFrames, StepRecord, is_record_frame
from rlmesh.security import HANDSHAKE_FAILED_EVENTS, ClientCurve, handshake_failure_message
from rlmesh.shm import ClientChannel, Spinner
from rlmesh.shm.doorbell import RECHECK_SECONDS, SPARE_THREADS
from rlmesh.specs import EnvContract
from rlmesh.stream import ClientStream
from rlmesh.tensor import Tensor
from rlmesh.transport import (
    HEARTBEAT_TIMEOUT_MS,
    configure,
    drain,
    readable,
    receive_message,
    recv_frame,
    send_frames,
    shared_context,
)

# How long a request waits for a lost connection to come back before giving up. Heartbeats
# notice a silent peer after HEARTBEAT_TIMEOUT_MS; a killed process is noticed at once.
RECONNECT_GRACE_S = 2 * HEARTBEAT_TIMEOUT_MS / 1000

DEFAULT_BUSY_POLL_SECONDS = 0.001
# How often a reply awaited over shared memory checks that the serving process still exists.
_CHANNEL_CHECK_S = 1.0
# Weight of the newest reply in the average round trip that decides whether to spin: a few
# slow replies stop spinning, a few fast ones bring it back.
_ROUND_TRIP_WEIGHT = 0.25

_CONNECTED = zmq.EVENT_HANDSHAKE_SUCCEEDED
_DISCONNECTED = zmq.EVENT_DISCONNECTED


class Connection:
    """Request/reply over one DEALER socket, raising instead of hanging on a dead server.

    Every request carries an id; replies with other ids (late replies after a timeout,
    liveness probes) are discarded. A socket monitor tracks the connection: a disconnect
    while a reply is awaited raises :class:`EndpointConnectionError` at once.

    For a unix-socket endpoint the handshake may set up a shared-memory channel
    (:meth:`hello_fields`, :meth:`attach`): requests and replies then travel through a mapped
    region while the socket keeps liveness and carries messages too large for the region.
    For a tcp endpoint without CURVE it may set up a step stream (:mod:`rlmesh.stream`,
    :meth:`attach_stream`): step records then travel over a plain TCP connection.
    """

    def __init__(
        self,
        endpoint: str,
        limits: Limits = DEFAULT_LIMITS,
        busy_poll_seconds: float = DEFAULT_BUSY_POLL_SECONDS,
        curve: ClientCurve | None = None,
        shared_memory: bool = True,
        tcp_stream: bool = True,
    ) -> None:
        self.endpoint = endpoint
        self.limits = limits
        self.shared_memory = shared_memory and ipc_path(endpoint) is not None and shm.enabled()
        self._stream_host = stream.tcp_host(endpoint) if tcp_stream and curve is None and stream.enabled() else None
        self._stream: ClientStream | None = None
        self._stream_request = 0  # the id of the step in flight over the stream
        self._stream_resend = b""  # its record, sent over the socket if the stream closes first
        self._channel: ClientChannel | None = None
        self._channel_request = 0  # the id of the request in flight over the channel
        self._channel_resend: Callable[[], list[Any]] | None = None  # its frames, if the server left
        self._record_frames: RecordFrames | None = None  # steps as single frames (see use_record_frames)
        self._spinner = Spinner(busy_poll_seconds)
        self.send_limits = limits  # narrowed to the server's limits by the handshake
        self.busy_poll_seconds = busy_poll_seconds
        self._sent_at = 0.0  # when the last request went over the socket
        self._round_trip = 0.0  # the average round trip over the socket (seconds)
        self._disconnects = 0
        self._session_open = False
        context = shared_context()
        self._socket = configure(context.socket(zmq.DEALER))
        self._socket.setsockopt(zmq.ROUTING_ID, uuid.uuid4().bytes)
        self.curve = curve
        if curve is not None:
            curve.apply(self._socket)
        self._handshake_failure: int | None = None
        self._monitor = self._socket.get_monitor_socket(_CONNECTED | _DISCONNECTED | HANDSHAKE_FAILED_EVENTS)
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._connected = False
        self._next_id = 1
        self._lock = threading.RLock()
        self.closed = False
        try:
            self._socket.connect(endpoint)
        except zmq.ZMQError as error:
            self.close()
            raise EndpointConnectionError(f"cannot connect to {endpoint}: {error}") from None

    def hello_fields(self) -> dict[str, Any]:
        """Handshake fields asking for step record frames, and a shared-memory channel when wanted."""
        fields: dict[str, Any] = {"socket_records": True}
        if self._stream_host is not None:
            fields.update(tcp_stream=True, pid=os.getpid())
        if self.shared_memory:
            fields.update(shared_memory=True, step_records=True, pid=os.getpid())
        return fields

    def use_record_frames(self, accepted: bool, contract: EnvContract) -> bool:
        """Send steps as record frames when the server ``accepted`` them in its handshake reply."""
        self._record_frames = RecordFrames.for_contract(contract) if accepted else None
        return self._record_frames is not None

    def attach(self, offer: Any, contract: EnvContract | None = None) -> bool:
        """Map the shared-memory region the server offered in its handshake reply.

        With the endpoint's ``contract``, steps travel as fixed-layout records when the
        server offers them. Returns whether the channel is in use; a failure leaves the
        session on ZeroMQ.
        """
        path = ipc_path(self.endpoint)
        if offer is None or path is None or not self.shared_memory:
            return False
        try:
            channel = ClientChannel.attach(path, offer)
        except (OSError, ValueError):
            return False
        if contract is not None and offer.get("step_records") is True:
            channel.use_records(StepRecord.for_contract(contract))
        with self._lock:
            self._close_channel()
            self._channel = channel
            self._poller.register(channel.fd, zmq.POLLIN)
        return True

    def attach_stream(self, offer: Any) -> bool:
        """Connect the step stream the server offered (after :meth:`use_record_frames`).

        Returns whether steps travel over it; a failure leaves the session on ZeroMQ.
        """
        records = self._record_frames
        if offer is None or records is None or self._stream_host is None:
            return False
        connected = ClientStream.connect(self._stream_host, offer, records.reply_bytes)
        with self._lock:
            self._close_stream()
            self._stream = connected
            if connected is not None:
                self._poller.register(connected.fd, zmq.POLLIN)
        return connected is not None

    @property
    def uses_tcp_stream(self) -> bool:
        """Whether steps travel over a step stream (:mod:`rlmesh.stream`)."""
        return self._stream is not None

    @property
    def uses_shared_memory(self) -> bool:
        """Whether requests travel through a shared-memory channel."""
        return self._channel is not None

    def request(
        self,
        op: str,
        payload: Any,
        *,
        timeout: float | None,
        decode_leaf: Callable[[Tensor], Any] | None = None,
        encode_leaf: Callable[[Any], Any] | None = None,
        connecting: bool = False,
    ) -> Any:
        """Send one request and return the decoded reply payload.

        Raises:
            EndpointConnectionError: the server vanished (or, when ``connecting``, was never
                reached within ``timeout``).
            EndpointTimeoutError: no reply within ``timeout`` seconds.
            RLMeshError: the typed error the server replied with.
        """
        with self._lock:
            if op == p.CLOSE and not self._session_open:
                return None  # no handshake succeeded: there is no session to close
            request_id = self.send(op, payload, encode_leaf=encode_leaf)
            return self.receive(op, request_id, timeout=timeout, decode_leaf=decode_leaf, connecting=connecting)

    def send(self, op: str, payload: Any, *, encode_leaf: Callable[[Any], Any] | None = None) -> int:
        """Send one request without waiting; returns the id to pass to :meth:`receive`.

        Raises:
            EndpointConnectionError: the connection is closed.
        """
        with self._lock:
            if self.closed:
                raise EndpointConnectionError(f"the connection to {self.endpoint} is closed")
            if self._handshake_failure is not None:
                raise EndpointConnectionError(
                    handshake_failure_message(self.endpoint, self._handshake_failure, self.curve)
                )
            request_id = self._next_id
            self._next_id += 1
            channel = self._channel
            if channel is not None and channel.server_gone():
                self._close_channel()  # the server ended the session: it answers on the socket
                channel = None
            if channel is not None and op == p.STEP and channel.record is not None:
                record = channel.record.encode_action(payload, encode_leaf)
                if record is not None and channel.send_step(record[0], record[1], request_id):
                    # Encoded only if the server leaves before reading it (see _await).
                    resend = functools.partial(encode_message, op, request_id, payload, encode_leaf, self.send_limits)
                    self._channel_request, self._channel_resend = request_id, resend
                    return request_id
            records = self._record_frames
            if channel is None and op == p.STEP and records is not None:
                action = records.record.encode_action(payload, encode_leaf)
                if action is not None:
                    frame = records.request(action[0], action[1], request_id)
                    if self._stream is not None and self._stream.send(frame):
                        self._stream_request, self._stream_resend = request_id, frame
                        return request_id
                    self._close_stream()  # it failed (if there was one): the socket carries it
                    self._sent_at = time.perf_counter()
                    send_frames(self._socket, [frame])
                    return request_id
            frames = encode_message(op, request_id, payload, encode_leaf, self.send_limits)
            # CLOSE goes over the socket: the server drops the channel while answering it.
            if channel is not None and op != p.CLOSE and channel.send(frames):
                self._channel_request, self._channel_resend = request_id, lambda: frames
            else:
                self._sent_at = time.perf_counter()
                send_frames(self._socket, frames)
            return request_id

    def receive(
        self,
        op: str,
        request_id: int,
        *,
        timeout: float | None,
        decode_leaf: Callable[[Tensor], Any] | None = None,
        connecting: bool = False,
    ) -> Any:
        """Wait for the reply to request ``request_id`` (sent by :meth:`send`); raises like :meth:`request`."""
        with self._lock:
            if self.closed:
                raise EndpointConnectionError(f"the connection to {self.endpoint} is closed")
            channel = self._channel if request_id == self._channel_request else None
            streamed = self._stream if request_id == self._stream_request else None
            header, reply = self._await(op, request_id, timeout, decode_leaf, connecting, channel, streamed)
        if header.kind == p.ERROR:
            raise p.error_from_payload(reply, self.endpoint)
        if op == p.HELLO and isinstance(reply, dict):
            self._session_open = True
            self._adopt_server_limits(reply)
        return reply

    def _adopt_server_limits(self, hello: dict[str, Any]) -> None:
        """Refuse locally what the server would refuse: requests over its size limits."""
        max_bytes, max_tensors = hello.get("max_message_bytes"), hello.get("max_tensors")
        if type(max_bytes) is int and max_bytes > 0:
            self.send_limits = Limits(max_bytes, self.send_limits.max_tensors, self.send_limits.max_depth)
        if type(max_tensors) is int and max_tensors > 0:
            self.send_limits = Limits(self.send_limits.max_message_bytes, max_tensors, self.send_limits.max_depth)

    def _await(
        self,
        op: str,
        request_id: int,
        timeout: float | None,
        decode_leaf: Any,
        connecting: bool,
        channel: ClientChannel | None = None,
        streamed: ClientStream | None = None,
    ) -> Any:
        if streamed is not None:
            self._spinner.spin_until(streamed.readable)  # a core that sleeps wakes up cold: spin briefly
        elif channel is None:
            self._spin()
        elif (
            channel.server_was_awake or channel.replied() or not MACHINE_LOAD.oversubscribed(SPARE_THREADS)
        ) and channel.wait(self._spinner):
            result = channel.receive(decode_leaf, self.limits)
            if result is not None:
                return result
            channel = None  # the reply was too large for the region: it comes over the socket
        disconnects = self._disconnects
        deadline = None if timeout is None else time.monotonic() + timeout
        lost_at: float | None = None if self._connected or connecting else time.monotonic()
        quiet = False
        recheck = channel is not None  # the first sleep is short (see rlmesh.shm.doorbell)
        while True:
            if channel is not None:
                channel.doze()  # then check: the server rings for a reply written after this
                if channel.replied():
                    self._spinner.arrived()
                    result = channel.receive(decode_leaf, self.limits)
                    if result is not None:
                        return result
                    channel = None
                elif channel.server_gone(check_process=quiet):
                    # Never read: send it to the server's front, which answers (no session).
                    resend, self._channel_resend = self._channel_resend, None
                    self._close_channel()
                    channel = None
                    if resend is not None:
                        send_frames(self._socket, resend())
            now = time.monotonic()
            wait = [RECONNECT_GRACE_S if lost_at is None else max(0.0, lost_at + RECONNECT_GRACE_S - now)]
            if deadline is not None:
                wait.append(max(0.0, deadline - now))
            if channel is not None:
                wait.append(RECHECK_SECONDS if recheck else _CHANNEL_CHECK_S)  # a dead server never rings
                recheck = False
            events = dict(self._poller.poll(min(wait) * 1000))
            quiet = not events
            if streamed is not None and streamed.fd in events:
                self._spinner.arrived()
                try:
                    frames = streamed.receive(self.limits.max_message_bytes, self.limits.max_tensors + 1)
                except ProtocolError:
                    self._close_stream()  # its framing is lost: later steps take the socket
                    raise
                if frames is not None:
                    header, reply = self._read_streamed(frames, decode_leaf)
                    if header.request_id == request_id:
                        self._connected = True
                        return header, reply
                    continue
                # The server closed the stream before replying: its session ended, or it died.
                # The step was not taken; the front answers it (with no session) or is gone.
                self._close_stream()
                streamed = None
                send_frames(self._socket, [self._stream_resend])
            if self._socket in events:
                first = recv_frame(self._socket)
                if self._record_frames is not None and is_record_frame(first):
                    header, reply = self._read_record(first, decode_leaf)
                else:
                    header, reply = receive_message(self._socket, first, decode_leaf, self.limits)
                if header.request_id == request_id and header.kind != p.PROBE:
                    self._timed_reply()
                    self._connected = True
                    return header, reply
                continue  # a late reply to an abandoned request, or a liveness probe
            if self._monitor in events:
                was_connected = self._connected
                self._read_monitor()
                if self._handshake_failure is not None:
                    raise EndpointConnectionError(
                        handshake_failure_message(self.endpoint, self._handshake_failure, self.curve)
                    )
                dropped = self._disconnects != disconnects
                if (dropped or (not self._connected and was_connected)) and not connecting:
                    # Even when already reconnected: the request died with the old connection.
                    raise EndpointConnectionError(
                        f"lost the connection to {self.endpoint} while waiting for the reply to {op!r}; "
                        "the server stopped or crashed, or dropped a message over its size limit"
                    )
                lost_at = None if self._connected else lost_at
                continue
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if connecting:
                    raise EndpointConnectionError(
                        f"could not connect to {self.endpoint} within {timeout:g}s; "
                        "check that a server runs at that address"
                    )
                raise EndpointTimeoutError(f"no reply to {op!r} from {self.endpoint} within {timeout:g}s")
            if lost_at is not None and now - lost_at >= RECONNECT_GRACE_S and not connecting:
                raise EndpointConnectionError(
                    f"{self.endpoint} is unreachable (no connection for {RECONNECT_GRACE_S:g}s); "
                    "the server stopped or crashed"
                )

    def _spin(self) -> None:
        """Busy-wait briefly for the reply before sleeping in poll, while that pays.

        A blocked thread on an idle core takes tens of microseconds to wake up; for fast envs
        that is most of a round trip. Spinning for up to ``busy_poll_seconds`` (checking the
        socket's EVENTS, which also lets ZeroMQ process its I/O notifications) roughly halves
        step latency at the cost of one busy core while a reply is awaited. It only pays
        when replies come within that window: every reply's round trip feeds an average,
        and while the average is longer (a slow env, a server shared by many clients, a
        server in this process waiting for the GIL) the client does not spin at all, so it
        never burns CPU that others need. Nor does it spin while more threads are runnable
        than there are cores.
        """
        if self.busy_poll_seconds <= 0 or self._round_trip > self.busy_poll_seconds:
            return
        if MACHINE_LOAD.oversubscribed():
            return
        socket, clock = self._socket, time.perf_counter
        end = clock() + self.busy_poll_seconds
        while not readable(socket):
            if clock() >= end:
                return

    def _timed_reply(self) -> None:
        """Fold the round trip of the reply just received into the average :meth:`_spin` uses."""
        took = time.perf_counter() - self._sent_at
        self._round_trip += (took - self._round_trip) * _ROUND_TRIP_WEIGHT

    def _read_streamed(self, frames: list[memoryview], decode_leaf: Any) -> tuple[Any, Any]:
        """Decode a reply from the step stream: a record frame, or an encoded message."""
        records = self._record_frames
        if len(frames) == 1 and records is not None and is_record_frame(frames[0]):
            return records.read_reply(frames[0], decode_leaf)
        return decode_frames([bytes(frames[0]), *frames[1:]], decode_leaf, self.limits)

    def _read_record(self, frame: Any, decode_leaf: Any) -> tuple[Any, Any]:
        """Decode a step record reply (a single frame: anything after it is drained, and refused)."""
        records = self._record_frames
        assert records is not None
        if drain(self._socket):
            raise ProtocolError("a step record reply came with extra frames")
        return records.read_reply(frame, decode_leaf)

    def _read_monitor(self) -> None:
        while True:
            try:
                message = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            event = parse_monitor_message(message)["event"]
            if event == _CONNECTED:
                self._connected = True
            elif event == _DISCONNECTED:
                self._connected = False
                self._disconnects += 1
            elif event & HANDSHAKE_FAILED_EVENTS:
                self._connected = False
                self._handshake_failure = event

    def _close_stream(self) -> None:
        held, self._stream = self._stream, None
        if held is not None:
            self._poller.unregister(held.fd)
            held.close()

    def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            self._poller.unregister(channel.fd)
            channel.close()

    def close(self) -> None:
        """Close the shared-memory channel, the socket and its monitor. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._close_channel()
        self._close_stream()
        try:
            self._socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


__all__ = ["Connection"]
