"""Session workers: each client session's env runs in its own thread or child process.

A :class:`SessionWorker` turns request frames into reply frames for one env (``handle``),
with no socket of its own, so any request source can drive it. :func:`serve_session` runs a
worker over a DEALER socket connected to the server front's backend ROUTER: the front only
moves frames, so a slow env, a slow ``env.close()`` or a crashing env process delays or
ends its own session only.

Control messages between the front and a worker are single frames that no encoded
message can equal (encoded messages start with a msgpack array tag).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rlmesh import protocol as p
from rlmesh.codec import DEFAULT_LIMITS, Header, Limits, decode_frames, encode_message
from rlmesh.env_runner import EnvRunner, plain_data
from rlmesh.errors import BadRequestError, ProtocolError, ProtocolVersionError
from rlmesh.record import RecordFrames, is_record_frame
from rlmesh.shm.serving import SessionFastPath
from rlmesh.specs import EnvContract
from rlmesh.stream import ServerStream
from rlmesh.tensor import Tensor
from rlmesh.transport import configure, readable, recv_frames, send_frames, shared_context

log = logging.getLogger("rlmesh.server")

READY = b"\x00ready"  # worker -> front: the env is built (or failed); send requests
DONE = b"\x00done"  # worker -> front: the env is closed, the worker has ended
ACTIVE = b"\x00active"  # worker -> front: requests arrive over shared memory (not idle)
STOP = b"\x00stop"  # front -> worker: close the env and end
RELEASE = b"\x00release"  # front -> thread worker: end, handing the worker (env open) back
RELEASED = b"\x00released"  # thread worker -> front: the worker is in the hand-back list

_PARENT_CHECK_MS = 1000
# How often a session whose requests bypass the front (shared memory, step stream) tells
# the front it is alive, so that the front does not count it idle.
_ACTIVITY_INTERVAL_S = 0.25


@dataclass(frozen=True)
class DataPlanes:
    """The data planes beside ZeroMQ a session's worker may offer its client at the handshake.

    Attributes:
        shared_memory_path: A unix endpoint's socket path: offer a shared-memory channel
            (a region created beside it). None: no shared memory.
        stream_host: A tcp endpoint's host: offer a step stream listening there
            (:mod:`rlmesh.stream`). None: no stream.
        send_timeout_seconds: Drop a stream client that has not read a reply for this long.
    """

    shared_memory_path: str | None = None
    stream_host: str | None = None
    send_timeout_seconds: float = 10.0


class SessionWorker:
    """Serves one session's requests against one env.

    Args:
        runner: The env to serve; None when building it failed (``failure`` says why).
        contract: The server's contract; the hello reply carries it.
        limits: Bounds on received requests (announced in the hello reply).
        owns_env: Whether ending the session closes the env (factory sessions).
        failure: The exception the env factory raised, answered to the first request.
        send_tracebacks: Include tracebacks in env error replies (else type and message).
    """

    def __init__(
        self,
        runner: EnvRunner | None,
        contract: EnvContract,
        limits: Limits = DEFAULT_LIMITS,
        *,
        owns_env: bool = True,
        failure: BaseException | None = None,
        send_tracebacks: bool = True,
    ) -> None:
        self.runner = runner
        self.send_tracebacks = send_tracebacks
        self.contract = contract
        self.limits = limits
        self.owns_env = owns_env
        self.failure = failure
        self.finished = failure is not None and runner is None
        # Set by serve_session for unix-socket endpoints that offer the shared-memory plane.
        self.fast_path: SessionFastPath | None = None
        # Set by serve_session for tcp endpoints that offer a step stream.
        self.stream: ServerStream | None = None
        # Steps as single record frames, offered at the handshake (None: spaces need encoding).
        self.record_frames = RecordFrames.for_contract(contract)

    def handle(self, frames: list[Any], header: Header | None = None) -> list[Any]:
        """Answer one request (its frames, header first); returns the reply frames.

        ``header`` is frame 0 when the caller parsed and checked it already. Sets
        :attr:`finished` once the session has ended (a ``close`` request, or an env that
        could not be built).
        """
        if is_record_frame(frames[0]):
            return self.answer_record(frames)
        return self.answer(lambda: decode_frames(frames, Tensor.numpy, self.limits, header))

    def answer_record(self, frames: list[Any]) -> list[Any]:
        """Answer a step record frame: with a record frame when the reply fits one, else encoded."""
        request_id = 0
        try:
            records = self.record_frames
            if records is None:
                raise ProtocolError("a step record arrived, but this session encodes every step")
            request_id, action = records.read_request(frames[0])
            payload = self.step(action)
        except Exception as error:
            return self.error_reply(request_id, error)
        frame = records.reply(request_id, payload)
        return self.ok_reply(request_id, payload) if frame is None else [frame]

    def answer(self, read: Callable[[], tuple[Any, Any]]) -> list[Any]:
        """Answer the request ``read()`` returns as ``(header, payload)``; returns the reply frames."""
        request_id = 0
        try:
            header, payload = read()
            request_id = header.request_id
            if self.failure is not None:
                raise self.failure
            reply = self._dispatch(header.kind, payload)
        except Exception as error:
            return self.error_reply(request_id, error)
        return self.ok_reply(request_id, reply)

    def step(self, action: Any) -> Any:
        """The reply payload of a step whose action is decoded already; raises as the env does."""
        if self.failure is not None:
            raise self.failure
        runner = self.runner
        assert runner is not None
        return runner.step(action)

    def ok_reply(self, request_id: int, payload: Any) -> list[Any]:
        """The frames of a successful reply (values that cannot cross the wire are sent as their repr)."""
        return _encode_reply(request_id, payload, self.send_tracebacks)

    def error_reply(self, request_id: int, error: BaseException) -> list[Any]:
        """The frames of the error reply for ``error`` (a refusal may name its own request id)."""
        request_id = getattr(error, "request_id", request_id)
        return encode_message(p.ERROR, request_id, p.reply_for(error, self.send_tracebacks))

    def _dispatch(self, op: str, payload: Any) -> Any:
        runner = self.runner
        assert runner is not None
        if op == p.STEP:
            return runner.step(payload)
        if op == p.RESET:
            return runner.reset(payload)
        if op == p.HELLO:
            return self.hello(payload)
        if op == p.RENDER:
            return runner.render()
        if op == p.CLOSE:
            self.close()
            return None
        raise BadRequestError(f"unknown op {op!r}; expected one of {sorted(p.OPS)}")

    def serves_socket_only(self) -> bool:
        """Whether every request comes over the worker's socket (no shared-memory channel or
        step stream was set up): only then can the server's front thread serve the session."""
        fast, stream = self.fast_path, self.stream
        return (fast is None or fast.fd is None) and (stream is None or stream.fd is None)

    def hello(self, payload: Any) -> dict[str, Any]:
        """The handshake reply: protocol version, contract and the server's request limit."""
        check_hello(payload)
        reply = {
            "protocol": p.PROTOCOL_VERSION,
            "contract": self.contract.to_dict(),
            "max_message_bytes": self.limits.max_message_bytes,
            "max_tensors": self.limits.max_tensors,
        }
        if payload.get("socket_records"):
            reply["socket_records"] = self.record_frames is not None
        offer = None if self.fast_path is None else self.fast_path.offer(payload)
        if offer is not None:
            reply["shared_memory"] = offer
        stream = self.stream if payload.get("tcp_stream") else None
        offer = None if stream is None else stream.offer(payload.get("pid"))
        if offer is not None:
            reply["tcp_stream"] = offer
        return reply

    def close(self) -> None:
        """End the session: close the env if this session owns it. Idempotent."""
        self.finished = True
        if self.fast_path is not None:
            self.fast_path.close()
        if self.stream is not None:
            self.stream.close()
        runner, self.runner = self.runner, None
        if runner is not None and self.owns_env:
            try:
                runner.close()
            except Exception:
                log.exception("env.close() raised")


def check_hello(payload: Any) -> None:
    """Refuse a handshake that is malformed or speaks another protocol version.

    Raises:
        ProtocolError: the payload is not a dict.
        ProtocolVersionError: the versions differ (both are named).
    """
    if not isinstance(payload, dict):
        raise ProtocolError("hello expects a dict payload")
    version = payload.get("protocol")
    if version != p.PROTOCOL_VERSION:
        raise ProtocolVersionError(
            f"protocol version mismatch: client speaks {version!r}, server speaks {p.PROTOCOL_VERSION}"
        )


def _encode_reply(request_id: int, reply: Any, tracebacks: bool) -> list[Any]:
    try:
        return encode_message(p.OK, request_id, reply)
    except (TypeError, ValueError) as error:
        try:  # an info dict with values that cannot cross the wire: send their repr
            frames = encode_message(p.OK, request_id, plain_data(reply))
        except (TypeError, ValueError):
            message = f"the env returned a value that cannot cross the wire: {error}"
            return encode_message(p.ERROR, request_id, p.error_payload(p.E_ENV, message, error, traceback=tracebacks))
        log.warning("reply held values that cannot cross the wire; sent their repr: %s", error)
        return frames


def build_worker(
    make_env: Callable[[], Any],
    contract: EnvContract,
    limits: Limits,
    runner: EnvRunner | None = None,
    *,
    send_tracebacks: bool = True,
) -> SessionWorker:
    """A worker for a fresh env from ``make_env`` (or for ``runner``, already built).

    A factory that raises, or makes an env with another contract, gives a worker that
    answers its first request with that error.
    """
    if runner is not None:
        return SessionWorker(runner, contract, limits, send_tracebacks=send_tracebacks)
    env = None
    try:
        env = make_env()
        runner = EnvRunner(env)
        if runner.contract != contract:
            raise RuntimeError(f"the env factory made an env with a different contract: {runner.contract}")
    except Exception as error:
        if env is not None:
            try:
                env.close()
            except Exception:
                log.exception("env.close() raised")
        return SessionWorker(None, contract, limits, failure=error, send_tracebacks=send_tracebacks)
    return SessionWorker(runner, contract, limits, send_tracebacks=send_tracebacks)


def serve_session(
    worker_factory: Callable[[], SessionWorker],
    endpoint: str,
    worker_id: bytes,
    context: zmq.Context | None = None,
    parent_pid: int | None = None,
    planes: DataPlanes | None = None,
    handback: list[SessionWorker] | None = None,
) -> None:
    """Run one session: build the worker, then answer requests from the front until done.

    Args:
        worker_factory: Builds the :class:`SessionWorker` (and its env) in this thread.
        endpoint: The front's backend ROUTER.
        worker_id: This worker's routing id on the backend.
        context: The ZeroMQ context (the shared one when None).
        parent_pid: In a child process, the server's pid: the worker ends if it goes away.
        planes: The data planes the worker may offer beside ZeroMQ (None: ZeroMQ only).
        handback: Where a thread worker asked to :data:`RELEASE` its session puts the worker
            (its env still open) before it answers :data:`RELEASED` and ends.
    """
    socket = configure((context or shared_context()).socket(zmq.DEALER))
    socket.setsockopt(zmq.ROUTING_ID, worker_id)
    socket.connect(endpoint)
    worker: SessionWorker | None = None
    ended = DONE
    try:
        worker = worker_factory()
        _offer_planes(worker, planes)
        socket.send(READY)
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        polled: set[int] = set()
        active_at = 0.0  # when the front last heard that requests bypass it
        while not worker.finished:
            fast, streamed = worker.fast_path, worker.stream
            if fast is not None and fast.has_request():
                _serve_fast_path(worker, fast, socket)
                active_at = _tell_active(socket, active_at)
                continue
            polled = _poll_fds(poller, polled, fast, streamed)
            longest = _PARENT_CHECK_MS if parent_pid is not None else None
            events = dict(poller.poll(longest if fast is None else fast.sleep_ms(longest)))
            if not events:
                if parent_pid is not None and os.getppid() != parent_pid:
                    break  # the server died: nobody is left to answer
                continue
            if streamed is not None and streamed.fd in events:
                streamed.spinner.arrived()
                _serve_stream(worker, streamed)
                active_at = _tell_active(socket, active_at)
                if streamed.should_spin():
                    streamed.spinner.spin_until(streamed.readable)  # the client's next step comes soon
            # A busy stream must not starve the front's messages (STOP, RELEASE, requests).
            if worker.finished or not readable(socket):
                continue  # the doorbell rang
            frames = recv_frames(socket, copied=1)
            if len(frames) == 1 and frames[0] == STOP:
                break
            if len(frames) == 1 and frames[0] == RELEASE:
                if handback is not None and worker.serves_socket_only():
                    handback.append(worker)
                    worker, ended = None, RELEASED
                    break
                socket.send(READY)  # this session stays here: the front resumes forwarding
                continue
            if fast is not None and fast.has_request(spin=False):
                _serve_fast_path(worker, fast, socket)  # written before this one was sent
            reply = worker.handle(frames)
            del frames  # a large request's buffers go back now, not at the next request
            send_frames(socket, reply)
            del reply
    except zmq.ContextTerminated:
        pass
    finally:
        if worker is not None:
            worker.close()
        try:
            socket.send(ended, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        socket.close(linger=1000 if parent_pid is not None or ended == RELEASED else 0)


def _offer_planes(worker: SessionWorker, planes: DataPlanes | None) -> None:
    """Give ``worker`` what it needs to offer the ``planes`` at the handshake."""
    if planes is None:
        return
    if planes.shared_memory_path is not None:
        worker.fast_path = SessionFastPath(planes.shared_memory_path, worker.contract, worker.limits)
    records = worker.record_frames
    if planes.stream_host is not None and records is not None:
        worker.stream = ServerStream(
            planes.stream_host, records.request_bytes, records.reply_bytes, planes.send_timeout_seconds
        )


def _poll_fds(
    poller: zmq.Poller, polled: set[int], fast: SessionFastPath | None, streamed: ServerStream | None
) -> set[int]:
    """Keep ``poller`` on the descriptors of the worker's planes; returns those polled now."""
    fds = (None if fast is None else fast.fd, None if streamed is None else streamed.fd)
    wanted = {fd for fd in fds if fd is not None}
    if wanted != polled:
        for fd in polled - wanted:
            poller.unregister(fd)
        for fd in wanted - polled:
            poller.register(fd, zmq.POLLIN)
    return wanted


def _tell_active(socket: zmq.Socket, active_at: float) -> float:
    """Tell the front this session is busy, at most once per interval; returns when it was last told."""
    now = time.monotonic()
    if now - active_at < _ACTIVITY_INTERVAL_S:
        return active_at
    socket.send(ACTIVE)
    return now


def _serve_fast_path(worker: SessionWorker, fast: SessionFastPath, socket: zmq.Socket) -> None:
    """Answer the request waiting in shared memory; a reply it cannot hold goes to the front."""
    reply = fast.serve(worker)
    if reply is not None:
        send_frames(socket, reply)


def _serve_stream(worker: SessionWorker, streamed: ServerStream) -> None:
    """Take the stream's client, or answer the step record it sent (every reply over the stream)."""
    if not streamed.connected:
        streamed.accept()
        return
    frame = streamed.receive()
    if frame is None:
        return  # the client closed it: the front ends the session once the client is gone
    if not streamed.send(worker.answer_record([frame])):
        log.warning(
            "closing a session whose client did not read a step reply within %gs (or left)",
            streamed.send_timeout_seconds,
        )
        worker.close()


def start_thread_worker(
    worker_factory: Callable[[], SessionWorker],
    endpoint: str,
    worker_id: bytes,
    planes: DataPlanes | None = None,
    handback: list[SessionWorker] | None = None,
) -> threading.Thread:
    """Serve one session in a daemon thread of this process (``handback``: see :func:`serve_session`)."""
    thread = threading.Thread(
        target=serve_session,
        args=(worker_factory, endpoint, worker_id),
        kwargs={"planes": planes, "handback": handback},
        name="rlmesh-session",
        daemon=True,
    )
    thread.start()
    return thread


def process_worker_main(
    make_env: Callable[[], Any],
    contract: dict[str, Any],
    limits: Limits,
    endpoint: str,
    worker_id: bytes,
    parent_pid: int,
    send_tracebacks: bool = True,
    planes: DataPlanes | None = None,
) -> None:
    """Entry point of a session's child process (picklable arguments only)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its children itself
    logging.basicConfig(level=logging.INFO, format="rlmesh %(levelname)s %(message)s")
    parsed = EnvContract.from_dict(contract)
    context = zmq.Context()
    try:
        serve_session(
            lambda: build_worker(make_env, parsed, limits, send_tracebacks=send_tracebacks),
            endpoint,
            worker_id,
            context,
            parent_pid,
            planes,
        )
    finally:
        context.term()
