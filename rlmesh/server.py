"""EnvServer: serve a Gymnasium env, vector env, or env factory on a ZeroMQ ROUTER socket.

The front (one thread, the only user of the ROUTER) reads requests, answers handshakes,
shutdowns and malformed messages itself, and forwards everything else to the session's
worker (see :mod:`rlmesh.sessions`) over a backend ROUTER; replies travel back the same
way. The front never blocks on a peer: replies are sent without waiting, and a client
that stops reading them is dropped after ``send_timeout_seconds``.

While a thread-isolated server has one session only, the front runs that session's worker
itself, which saves two thread hand-offs per step; the session moves to its own thread as
soon as another client says hello or one of its requests takes longer than 50 ms, so a
slow env can delay another client's handshake by one request at most, once.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import pickle
import resource
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from rlmesh import protocol as p
from rlmesh import shm, stream
from rlmesh.addresses import claim_ipc_path, file_identity, ipc_path, remove_ipc_file, resolve_address
from rlmesh.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_MAX_TENSORS,
    Header,
    Limits,
    check_frames,
    decode_body,
    encode_message,
    parse_header,
)
from rlmesh.env_runner import EnvRunner, is_vector_env
from rlmesh.errors import (
    BadRequestError,
    EnvBusyError,
    ProtocolError,
    ServerFullError,
    ServerShuttingDownError,
    SessionClosedError,
)
from rlmesh.record import is_record_frame, record_header
from rlmesh.security import EndpointSecurity, KeySource
from rlmesh.sessions import (
    ACTIVE,
    DONE,
    READY,
    RELEASE,
    RELEASED,
    STOP,
    DataPlanes,
    SessionWorker,
    build_worker,
    check_hello,
    process_worker_main,
    start_thread_worker,
)
from rlmesh.shm import remove_stale
from rlmesh.transport import NOBLOCK, configure, readable, recv_frames, send_frames, shared_context

log = logging.getLogger("rlmesh.server")
_BACKEND_NAMES = itertools.count(1)  # inproc names for thread-isolated servers' session backends

_POLL_MS = 50
_PROBE_INTERVAL_S = 5.0
_SWEEP_INTERVAL_S = 0.05
# A well-behaved client has one request in flight; these bound what a flooding one costs.
_MAX_IN_FLIGHT = 8
_MAX_QUEUED = 64
# A request that takes longer than this moves a session served on the front to its own thread.
_INLINE_MAX_S = 0.05
# Messages libzmq queues per peer and direction (each at most max_message_bytes).
_PEER_HWM = 64
ISOLATION_MODES = ("thread", "process")


@dataclass(frozen=True)
class ServeOptions:
    """How an :class:`EnvServer` behaves.

    Attributes:
        allow_remote_shutdown: Honour ``shutdown`` requests from clients.
        idle_timeout_seconds: Close a client's session (and its env, for factories) after this
            long without a request; None keeps sessions until the client detaches or vanishes.
        drain_timeout_seconds: On shutdown, keep serving connected clients for up to this long
            (new clients are refused) before closing; None closes at once.
        close_timeout_seconds: Give up waiting for an ``env.close()`` after this long.
        max_message_bytes: Largest accepted request (header plus tensors).
        max_tensors: Most tensor frames per request.
        busy_poll_seconds: After each reply, spin up to this long for the next request before
            sleeping (0 disables). Keeps the serving front awake for clients that step back
            to back, at the cost of CPU (and, with thread isolation, of GIL contention).
        max_sessions: Most concurrent client sessions; the next handshake gets a "server
            full" error. Lowered at start when the open-file limit cannot hold that many.
        send_timeout_seconds: Drop a client that has not read its replies for this long
            (its env is closed and the drop is logged).
        isolation: ``"thread"`` runs each session's env in its own thread (a session alone
            on the server is served by the server's own thread, with no hand-off per
            request, and goes back to it when the others have left); ``"process"`` (env
            factories only) in its own child process, so sessions use several cores and an
            env that crashes ends its own session only.
        curve_secret_key: The server's secret certificate file (``rlmesh keygen``); with
            ``curve_authorized_keys``, clients must authenticate with CURVE and traffic is
            encrypted.
        curve_authorized_keys: The client public keys accepted: a directory of ``*.key``
            certificates, or a sequence of certificate paths and z85 keys.
        allow_insecure: Serve a non-loopback tcp address without CURVE (logs a warning);
            otherwise that is refused with a ValueError before binding.
        send_tracebacks: Include the server's traceback in env error replies. None (default):
            only on loopback and unix endpoints; elsewhere clients get the exception type and
            message.
        tcp_stream: Offer clients of a tcp endpoint without CURVE a step stream: a plain TCP
            connection beside ZeroMQ that carries step records (:mod:`rlmesh.stream`), served
            by the session's own worker thread (not with process isolation). False (or
            ``RLMESH_TCP_STREAM=0`` in the environment) serves every message over ZeroMQ.
        shared_memory: Offer clients of a unix-socket endpoint (same host, sandboxes included)
            a shared-memory data plane: requests and replies are written in place in a region
            file beside the socket, ZeroMQ keeping the handshake, liveness and messages too
            large for the region. False (or ``RLMESH_SHARED_MEMORY=0`` in the environment)
            serves every message over ZeroMQ.
    """

    allow_remote_shutdown: bool = False
    idle_timeout_seconds: float | None = None
    drain_timeout_seconds: float | None = None
    close_timeout_seconds: float | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_tensors: int = DEFAULT_MAX_TENSORS
    busy_poll_seconds: float = 0.0
    max_sessions: int = 256
    send_timeout_seconds: float = 10.0
    isolation: str = "thread"
    curve_secret_key: str | os.PathLike[str] | None = None
    curve_authorized_keys: str | os.PathLike[str] | Sequence[KeySource] | None = None
    allow_insecure: bool = False
    send_tracebacks: bool | None = None
    shared_memory: bool = True
    tcp_stream: bool = True

    def __post_init__(self) -> None:
        for name in ("idle_timeout_seconds", "drain_timeout_seconds", "close_timeout_seconds"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be None or >= 0, got {value!r}")
        if not self.busy_poll_seconds >= 0:
            raise ValueError(f"busy_poll_seconds must be >= 0, got {self.busy_poll_seconds!r}")
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {self.max_message_bytes!r}")
        if not isinstance(self.max_sessions, int) or self.max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive int, got {self.max_sessions!r}")
        if not self.send_timeout_seconds > 0:
            raise ValueError(f"send_timeout_seconds must be positive, got {self.send_timeout_seconds!r}")
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"isolation must be one of {ISOLATION_MODES}, got {self.isolation!r}")


class _Session:
    """The front's view of one client session and its worker."""

    __slots__ = (
        "blocked_since",
        "closing",
        "dropped",
        "forwarded_at",
        "handback",
        "identity",
        "in_flight",
        "inline",
        "last_seen",
        "pinned",
        "process",
        "queued",
        "ready",
        "thread",
        "unsent",
        "worker_id",
    )

    def __init__(self, identity: bytes, worker_id: bytes) -> None:
        self.identity = identity
        self.worker_id = worker_id
        self.last_seen = time.monotonic()
        self.ready = False  # the worker announced itself: requests can go to it
        self.closing = False  # a close request was forwarded
        self.in_flight: deque[int] = deque()  # request ids forwarded, not yet answered
        self.forwarded_at = 0.0  # when the oldest request in flight went to the worker
        self.queued: deque[tuple[int, list[Any]]] = deque()  # waiting for the worker
        self.unsent: deque[list[Any]] = deque()  # replies the client's pipe had no room for
        self.blocked_since: float | None = None
        self.dropped = 0
        self.thread: threading.Thread | None = None
        self.process: Any = None
        self.inline: SessionWorker | None = None  # served on the front thread itself
        self.handback: list[SessionWorker] = []  # where its thread worker puts itself on RELEASE
        # Stays on a worker thread: a request too slow for the front, a shared-memory channel
        # or a step stream.
        self.pinned = False


def _as_factory(env: Any) -> Callable[[], Any] | None:
    if isinstance(env, str):
        return functools.partial(_make_gymnasium_env, env)
    if isinstance(env, type) or (callable(env) and not hasattr(env, "step")):
        return env
    return None


def _make_gymnasium_env(env_id: str) -> Any:
    import gymnasium

    return gymnasium.make(env_id)


def _session_capacity(requested: int) -> int:
    """``requested``, lowered so that the sessions' sockets fit the open-file limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    fitting = max(1, (soft - 64) // 3)  # a client connection, a worker socket, a spare
    if fitting < requested:
        log.warning("max_sessions lowered from %d to %d to fit the open-file limit %d", requested, fitting, soft)
    return min(requested, fitting)


class EnvServer:
    """Serve an environment to remote clients.

    ``env`` may be a Gymnasium env (served to one client at a time), a Gymnasium vector env
    (same), or a factory: a callable or a Gymnasium id string that makes a fresh env for
    each client session, so several clients can run side by side, each in its own worker.

    Example:
        >>> with EnvServer("CartPole-v1", port=0) as server:   # doctest: +SKIP
        ...     server.start()
        ...     env = rlmesh.numpy.RemoteEnv(server.address)
    """

    def __init__(
        self,
        env: Any,
        address: str | int | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | os.PathLike[str] | None = None,
        transport: str | None = None,
        options: ServeOptions | None = None,
    ) -> None:
        if address is None and host is None and port is None and path is None:
            port = 0
        endpoint = resolve_address(address, host=host, port=port, path=path, transport=transport)
        self.options = options or ServeOptions()
        # Checked before anything is made or bound: an insecure non-local bind is refused here.
        self._security = EndpointSecurity.for_endpoint(
            endpoint,
            curve_secret_key=self.options.curve_secret_key,
            curve_authorized_keys=self.options.curve_authorized_keys,
            allow_insecure=self.options.allow_insecure,
            send_tracebacks=self.options.send_tracebacks,
        )
        self._tracebacks = self._security.send_tracebacks
        self._limits = Limits(self.options.max_message_bytes, self.options.max_tensors)
        self._factory = _as_factory(env)
        self._processes = self.options.isolation == "process"
        if self._processes:
            if self._factory is None:
                raise ValueError(
                    "isolation='process' needs an env factory (a callable or an env id); "
                    f"got an env object of type {type(env).__name__}"
                )
            try:
                pickle.dumps(self._factory)
            except Exception as error:
                raise ValueError(
                    "isolation='process' needs a picklable env factory (a module-level callable, "
                    f"a functools.partial of one, or an env id); {self._factory!r:.80} is not: {error}"
                ) from None
        # The first env is made now: its spaces define the contract, and a factory that
        # cannot build an env, or an env whose spaces cannot cross the wire, fails here.
        first = self._factory() if self._factory is not None else env
        if not hasattr(first, "step") or not hasattr(first, "reset"):
            raise TypeError(f"EnvServer needs a Gymnasium env, vector env, or factory; got {type(env).__name__}")
        try:
            runner = EnvRunner(first)
        except Exception:
            if self._factory is not None:
                first.close()
            raise
        self.contract = runner.contract
        self._shared_runner = None if self._factory is not None else runner
        self._spare: EnvRunner | None = runner if self._factory is not None and not self._processes else None
        if self._processes:
            runner.close()  # each session's env is made in its own process
        self._max_sessions = _session_capacity(self.options.max_sessions)
        self._sessions: dict[bytes, _Session] = {}  # by client identity
        self._workers: dict[bytes, _Session] = {}  # by worker id, until the worker is done
        self._owner: bytes | None = None  # the client holding a single env object
        self._waiting: list[list[Any]] = []  # hellos waiting for that env
        self._spare_process: _Session | None = None
        self._worker_ids = itertools.count(1)
        self._closed_envs: set[int] = set()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._finished = False
        self._ipc_file: tuple[str, tuple[int, int] | None] | None = None
        path_ = ipc_path(endpoint)
        host = stream.tcp_host(endpoint)
        # Process-isolated sessions keep ZeroMQ: the front must see each step to report an env
        # process that dies during it as that step's error.
        offers_stream = host is not None and self.options.tcp_stream and stream.enabled() and not self._processes
        self._planes = DataPlanes(
            path_ if path_ and self.options.shared_memory and shm.enabled() else None,
            host if offers_stream and not self._security.encrypted else None,
            self.options.send_timeout_seconds,
        )
        self._backend_dir: str | None = None
        self._socket = configure(shared_context().socket(zmq.ROUTER))
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self.options.max_message_bytes + 4096)
        self._socket.setsockopt(zmq.RCVHWM, _PEER_HWM)
        self._socket.setsockopt(zmq.SNDHWM, _PEER_HWM)
        self._backend = shared_context().socket(zmq.ROUTER)
        self._backend.setsockopt(zmq.LINGER, 0)
        self._backend.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._backend.setsockopt(zmq.SNDHWM, 0)  # bounded by _MAX_IN_FLIGHT per session
        self._backend.setsockopt(zmq.RCVHWM, 0)
        try:
            path_ = ipc_path(endpoint)
            if path_:
                claim_ipc_path(path_)
                remove_stale(path_)  # regions a killed server offered but no client mapped
            self._security.apply(self._socket)
            self._socket.bind(endpoint)
            self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
            if path_:
                self._ipc_file = (path_, file_identity(path_))
            self._backend_endpoint = self._bind_backend()
        except (zmq.ZMQError, OSError, RuntimeError) as error:
            self._socket.close()
            self._backend.close()
            self._security.close()
            self._remove_backend_dir()
            self._close_runner(runner)
            if not isinstance(error, zmq.ZMQError):
                raise
            raise OSError(f"cannot bind {endpoint}: {error}") from None

    def _bind_backend(self) -> str:
        if not self._processes:
            # Unique per server for the process's lifetime: a name from id(self) could be
            # reused by a new server while a freed one's socket still holds it.
            endpoint = f"inproc://rlmesh-sessions-{os.getpid()}-{next(_BACKEND_NAMES)}"
            self._backend.bind(endpoint)
            return endpoint
        self._backend_dir = tempfile.mkdtemp(prefix="rlmesh-")
        endpoint = f"ipc://{self._backend_dir}/sessions"
        self._backend.bind(endpoint)
        return endpoint

    def _remove_backend_dir(self) -> None:
        if self._backend_dir is not None:
            shutil.rmtree(self._backend_dir, ignore_errors=True)
            self._backend_dir = None

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def is_vector(self) -> bool:
        """Whether this endpoint serves a vector env."""
        return self.contract.is_vector

    def start(self) -> EnvServer:
        """Serve in a background thread; returns self."""
        with self._lock:
            if self._thread is not None or self._finished:
                raise RuntimeError("EnvServer.start() may be called once, before shutdown()")
            self._thread = threading.Thread(target=self.serve, name=f"rlmesh-server {self.address}", daemon=True)
            self._thread.start()
        return self

    def serve(self) -> None:
        """Serve until :meth:`shutdown` (or a remote shutdown); blocks."""
        with self._lock:
            if self._serving or self._finished:
                raise RuntimeError("this EnvServer is already serving or has shut down")
            self._serving = True
        try:
            self._loop()
        finally:
            self._cleanup()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server has stopped; returns whether it has."""
        return self._stopped.wait(timeout)

    def shutdown(self) -> None:
        """Stop serving and close every env exactly once. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            never_served = not self._serving
        if never_served:
            self._cleanup()

    def __enter__(self) -> EnvServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        kind = "factory" if self._factory else "env"
        return f"EnvServer({self.contract.id!r}, address={self.address!r}, {kind})"

    # -- loop ---------------------------------------------------------------------------
    def _loop(self) -> None:
        socket, backend = self._socket, self._backend
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(backend, zmq.POLLIN)
        next_sweep = next_probe = time.monotonic()
        spin = self.options.busy_poll_seconds
        drain_deadline: float | None = None
        if self._processes:
            self._start_spare_process()
        while True:
            if self._stop.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + (self.options.drain_timeout_seconds or 0.0)
                if not self._sessions or time.monotonic() >= drain_deadline:
                    return
            events = dict(poller.poll(_POLL_MS))
            # One message from each side per poll, so neither can starve the other.
            if socket in events:
                self._from_client(recv_frames(socket))
            if backend in events:
                self._from_worker(recv_frames(backend))
            if events and spin:
                self._spin(spin)  # a client stepping back to back sends its next request soon
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + _SWEEP_INTERVAL_S
                self._sweep(now, probe=now >= next_probe)
                if now >= next_probe:
                    next_probe = now + 1.0

    def _spin(self, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for the next message; whether one arrived."""
        socket, backend, clock = self._socket, self._backend, time.perf_counter
        end = clock() + seconds
        while clock() < end:
            if readable(socket) or readable(backend):
                return True
        return False

    # -- requests -----------------------------------------------------------------------
    def _from_client(self, frames: list[Any]) -> None:
        identity = frames[0]
        if len(frames) < 2:
            return  # an empty message: nothing to answer
        request_id = 0
        try:
            first = frames[1]
            header = record_header(first) if is_record_frame(first) else parse_header(first, self._limits)
            request_id = header.request_id  # so that even a refusal reaches the waiting caller
            total = sum(len(frame) for frame in frames[1:])
            if total > self._limits.max_message_bytes:
                raise ProtocolError(
                    f"request of {total} bytes exceeds max_message_bytes={self._limits.max_message_bytes}"
                )
            check_frames(header, frames[2:])
            self._route(identity, header, frames)
        except Exception as error:
            request_id = getattr(error, "request_id", request_id)
            self._reply(identity, encode_message(p.ERROR, request_id, p.reply_for(error, self._tracebacks)))

    def _route(self, identity: bytes, header: Header, frames: list[Any]) -> None:
        session = self._sessions.get(identity)
        op, request_id = header.kind, header.request_id
        if op == p.HELLO:
            if session is None:
                hello = self._small_payload(header)
                check_hello(hello)
                session = self._open_session(identity, frames, hello)
                if session is None:
                    return  # waiting for a single env object to be released
        elif op == p.SHUTDOWN:
            self._reply(identity, encode_message(p.OK, request_id, self._shutdown_request(header, session)))
            return
        elif op not in p.OPS:
            raise BadRequestError(f"unknown op {op!r}; expected one of {sorted(p.OPS)}")
        elif session is None or session.closing:
            raise SessionClosedError(
                "no session for this client (the server may have restarted or closed it); reconnect"
            )
        session.last_seen = time.monotonic()
        if op == p.CLOSE:
            session.closing = True
        if self._can_forward(session) and not session.queued:
            self._forward(session, request_id, frames, header)
        elif len(session.queued) < _MAX_QUEUED:
            session.queued.append((request_id, frames))
        else:
            session.dropped += 1
            if session.dropped in (1, 1000):
                log.warning("dropping requests from a client that floods its session (%d so far)", session.dropped)

    def _forward(self, session: _Session, request_id: int, frames: list[Any], header: Header | None = None) -> None:
        """Hand a request to its session's worker (``header``: frame 0, if parsed already)."""
        if session.inline is not None:
            self._serve_inline(session, frames, header)
            return
        frames[0] = session.worker_id
        try:
            send_frames(self._backend, frames)
        except zmq.ZMQError:
            # The worker's end is gone: a session process that died before a sweep noticed.
            process = session.process
            code = None if process is None else process.exitcode
            error = SessionClosedError(
                f"the env process of this session exited with code {code} (a crash or os._exit); "
                "the session is closed: reconnect for a fresh env"
            )
            self._reply(session.identity, encode_message(p.ERROR, request_id, p.reply_for(error)))
            if process is not None and not process.is_alive():
                self._worker_died(session)
            else:
                self._end_session(session, "its worker is unreachable")
            return
        if not session.in_flight:
            session.forwarded_at = time.perf_counter()
        session.in_flight.append(request_id)

    def _small_payload(self, header: Header) -> Any:
        """The payload of a control request (no tensors expected: their placeholders fail)."""
        return decode_body(header.body, (), None, self._limits)

    def _shutdown_request(self, header: Header, session: _Session | None) -> dict[str, Any]:
        payload = self._small_payload(header)
        reason = payload.get("reason", "") if isinstance(payload, dict) else ""
        if not self.options.allow_remote_shutdown:
            return {"accepted": False, "message": "remote shutdown is disabled on this server"}
        if session is None or session.closing:
            # Under CURVE only authorised keys get this far; a session proves a handshake.
            return {"accepted": False, "message": "remote shutdown needs a session: connect (handshake) first"}
        log.info("remote shutdown requested: %s", reason)
        self._stop.set()
        return {"accepted": True, "message": "shutting down"}

    def _open_session(self, identity: bytes, frames: list[Any], hello: dict[str, Any]) -> _Session | None:
        """Open a session for the client whose handshake is ``hello``."""
        if self._stop.is_set():
            raise ServerShuttingDownError("the server is shutting down")
        if len(self._sessions) >= self._max_sessions:
            raise ServerFullError(
                f"server full: it serves {len(self._sessions)} sessions (max_sessions={self._max_sessions}); "
                "try again later, or raise max_sessions"
            )
        if self._factory is None and not self._claim_shared_env(identity, frames):
            return None
        for other in list(self._sessions.values()):
            if other.inline is not None:
                self._move_to_thread(other)
        session = _Session(identity, (next(self._worker_ids)).to_bytes(8, "little"))
        alone = not self._sessions and not self._workers
        planes = self._planes
        bypasses_front = (planes.shared_memory_path is not None and bool(hello.get("shared_memory"))) or (
            planes.stream_host is not None and bool(hello.get("tcp_stream"))
        )
        # A channel's (or stream's) requests are served by a worker thread polling it; any other
        # session alone on a thread-isolated server is served on the front, with no hand-off.
        if alone and not self._processes and not bypasses_front:
            session.inline = self._worker_factory()()
            session.ready = True
            self._sessions[identity] = session
            return session
        if self._processes:
            spare = self._spare_process
            if spare is not None and spare.process.is_alive():
                self._spare_process = None
                session.worker_id, session.process, session.ready = spare.worker_id, spare.process, spare.ready
                self._start_spare_process()
            else:
                self._start_process(session)
        else:
            session.pinned = bypasses_front
            session.thread = start_thread_worker(
                self._worker_factory(),
                self._backend_endpoint,
                session.worker_id,
                planes,
                session.handback,
            )
        self._sessions[identity] = session
        self._workers[session.worker_id] = session
        return session

    def _move_to_thread(self, session: _Session) -> None:
        """Hand a session served on the front over to a worker thread of its own."""
        worker, session.inline = session.inline, None
        assert worker is not None
        session.ready = False  # until the thread says READY; requests queue meanwhile
        # A fresh routing id: a thread that served this session before may still be leaving.
        session.worker_id = next(self._worker_ids).to_bytes(8, "little")
        session.thread = start_thread_worker(
            lambda: worker, self._backend_endpoint, session.worker_id, handback=session.handback
        )
        self._workers[session.worker_id] = session

    def _release_lone_session(self) -> None:
        """Bring a session left alone on a worker thread back to the front (no hand-offs per step).

        Sessions move to threads when a second one opens; once the others are gone, the one
        left asks its thread for its worker back, unless it is pinned there.
        """
        if len(self._sessions) != 1 or len(self._workers) != 1 or self._processes or self._stop.is_set():
            return
        session = next(iter(self._sessions.values()))
        # Not ready: the worker is starting, or a RELEASE is under way.
        if session.thread is None or session.pinned or session.closing or not session.ready:
            return
        try:
            send_frames(self._backend, [session.worker_id, RELEASE], NOBLOCK)
        except zmq.ZMQError:
            return
        session.ready = False  # requests queue until the worker is back

    def _worker_released(self, session: _Session) -> None:
        """The thread worker of ``session`` ended and handed its worker back: serve it inline."""
        self._workers.pop(session.worker_id, None)
        session.thread = None
        worker = session.handback.pop() if session.handback else None
        if worker is None or self._sessions.get(session.identity) is not session:
            if worker is not None:
                worker.close()  # the session ended meanwhile
            self._worker_done(session)
            return
        session.inline, session.ready = worker, True
        session.in_flight.clear()  # the thread answered every request it had before RELEASE
        if len(self._sessions) > 1 or self._workers:
            self._move_to_thread(session)  # another session opened meanwhile
        else:
            self._flush_queue(session)

    def _serve_inline(self, session: _Session, frames: list[Any], header: Header | None = None) -> None:
        worker = session.inline
        assert worker is not None
        started = time.perf_counter()
        reply = worker.handle(frames[1:], header)
        took = time.perf_counter() - started
        self._reply(session.identity, reply, session)
        if worker.finished:
            self._end_session(session, "its client closed it")
        elif took > _INLINE_MAX_S and session.inline is worker:
            session.pinned = True
            self._move_to_thread(session)

    def _worker_factory(self) -> Callable[[], SessionWorker]:
        if self._shared_runner is not None:
            return functools.partial(
                SessionWorker,
                self._shared_runner,
                self.contract,
                self._limits,
                owns_env=False,
                send_tracebacks=self._tracebacks,
            )
        assert self._factory is not None
        spare, self._spare = self._spare, None
        return functools.partial(
            build_worker, self._factory, self.contract, self._limits, spare, send_tracebacks=self._tracebacks
        )

    def _claim_shared_env(self, identity: bytes, frames: list[Any]) -> bool:
        """Whether ``identity`` may take the single env object now (else it waits or is refused)."""
        owner = self._owner
        if owner is not None and owner != identity:
            session = self._sessions.get(owner)
            if session is not None and self._alive(owner):
                raise EnvBusyError(
                    "busy: this endpoint serves a single env object and another client holds it; "
                    "serve a factory (callable or env id) to give each client its own env"
                )
            if session is not None:
                self._end_session(session, "its client vanished")
            if any(worker.identity == owner for worker in self._workers.values()):
                self._waiting.append(frames)  # until the old worker lets go of the env
                return False
        self._owner = identity
        return True

    def _start_process(self, session: _Session) -> None:
        import multiprocessing

        assert self._factory is not None
        context = multiprocessing.get_context("spawn")
        session.process = context.Process(
            target=process_worker_main,
            args=(
                self._factory,
                self.contract.to_dict(),
                self._limits,
                self._backend_endpoint,
                session.worker_id,
                os.getpid(),
                self._tracebacks,
                self._planes,
            ),
            name="rlmesh-session",
            daemon=True,
        )
        session.process.start()

    def _start_spare_process(self) -> None:
        """Start the next session's process ahead of its handshake."""
        if self._stop.is_set():
            return
        spare = _Session(b"", (next(self._worker_ids)).to_bytes(8, "little"))
        self._start_process(spare)
        self._spare_process = spare
        self._workers[spare.worker_id] = spare

    # -- replies ------------------------------------------------------------------------
    def _from_worker(self, frames: list[Any]) -> None:
        worker_id = frames[0]
        session = self._workers.get(worker_id)
        if session is None:
            return
        if len(frames) == 2 and frames[1] in (READY, DONE, ACTIVE, RELEASED):
            if frames[1] == ACTIVE:
                session.last_seen = time.monotonic()
            elif frames[1] == READY:
                session.ready = True
                self._flush_queue(session)
            elif frames[1] == RELEASED:
                self._worker_released(session)
            else:
                self._worker_done(session)
            return
        if session.in_flight:
            session.in_flight.popleft()
            now = time.perf_counter()
            if now - session.forwarded_at > _INLINE_MAX_S:
                session.pinned = True  # too slow to serve on the front, should it be left alone
            session.forwarded_at = now
        if self._sessions.get(session.identity) is session:
            self._reply(session.identity, frames[1:], session)
            if session.closing and not session.in_flight:
                # closed: its slot is free again (the reply may have ended it already)
                self._sessions.pop(session.identity, None)
        self._flush_queue(session)

    @staticmethod
    def _can_forward(session: _Session) -> bool:
        # A client that does not read its replies gets no more work done for it.
        return session.ready and len(session.in_flight) < _MAX_IN_FLIGHT and not session.unsent

    def _flush_queue(self, session: _Session) -> None:
        while session.queued and self._can_forward(session):
            request_id, frames = session.queued.popleft()
            self._forward(session, request_id, frames)

    def _reply(self, identity: bytes, reply: list[Any], session: _Session | None = None) -> None:
        """Send a reply without waiting; a session whose client's pipe is full keeps it."""
        frames = [identity, *reply]
        if session is not None and session.unsent:
            session.unsent.append(frames)
            return
        try:
            send_frames(self._socket, frames, NOBLOCK)
        except zmq.Again:
            if session is not None:  # the client is not reading: hold on, then drop it
                session.unsent.append(frames)
                session.blocked_since = time.monotonic()
        except zmq.ZMQError:
            if session is not None:  # the client vanished
                self._end_session(session, "its client vanished")

    def _retry_unsent(self, session: _Session, now: float) -> None:
        while session.unsent:
            try:
                send_frames(self._socket, session.unsent[0], NOBLOCK)
            except zmq.Again:
                assert session.blocked_since is not None
                if now - session.blocked_since > self.options.send_timeout_seconds:
                    log.warning(
                        "dropping a client that has not read its replies for %.1fs",
                        self.options.send_timeout_seconds,
                    )
                    self._end_session(session, "its client stopped reading replies")
                return
            except zmq.ZMQError:
                self._end_session(session, "its client vanished")
                return
            session.unsent.popleft()
        session.blocked_since = None
        self._flush_queue(session)

    # -- session ends -------------------------------------------------------------------
    def _end_session(self, session: _Session, why: str) -> None:
        """Forget a session and tell its worker to close the env and end."""
        if self._sessions.get(session.identity) is session:
            del self._sessions[session.identity]
            log.info("closing a session: %s", why)
        session.unsent.clear()
        session.queued.clear()
        if session.inline is not None:
            worker, session.inline = session.inline, None
            worker.close()
            self._worker_done(session)
        elif session.worker_id in self._workers:
            try:
                send_frames(self._backend, [session.worker_id, STOP], NOBLOCK)
            except zmq.ZMQError:
                pass  # not connected yet (a process still starting) or gone: it is reaped

    def _worker_done(self, session: _Session) -> None:
        self._workers.pop(session.worker_id, None)
        if self._sessions.get(session.identity) is session:
            del self._sessions[session.identity]
        if session.process is not None:
            session.process.join(5.0)
        if self._owner == session.identity and self._factory is None:
            self._owner = None
            waiting, self._waiting = self._waiting, []
            for frames in waiting:
                self._from_client(frames)

    def _worker_died(self, session: _Session) -> None:
        code = session.process.exitcode
        message = (
            f"the env process of this session exited with code {code} (a crash or os._exit); "
            "the session is closed: reconnect for a fresh env"
        )
        if self._sessions.get(session.identity) is session:
            log.warning("a session's env process exited with code %s", code)
            for request_id in session.in_flight:
                reply = encode_message(p.ERROR, request_id, p.error_payload(p.E_ENV, message))
                self._reply(session.identity, reply)
            for request_id, _ in session.queued:
                reply = encode_message(p.ERROR, request_id, p.error_payload(p.E_ENV, message))
                self._reply(session.identity, reply)
        session.in_flight.clear()
        session.queued.clear()
        self._worker_done(session)
        if session is self._spare_process:
            self._spare_process = None
            self._start_spare_process()

    def _alive(self, identity: bytes) -> bool:
        """Probe a peer: with ROUTER_MANDATORY, a vanished peer fails with EHOSTUNREACH."""
        try:
            send_frames(self._socket, [identity, encode_message(p.PROBE, 0, None)[0]], NOBLOCK)
        except zmq.Again:
            return True  # connected but its queue is full
        except zmq.ZMQError:
            return False
        return True

    def _sweep(self, now: float, probe: bool) -> None:
        idle = self.options.idle_timeout_seconds
        for session in list(self._sessions.values()):
            if session.unsent:
                self._retry_unsent(session, now)
            if not probe:
                continue
            quiet_for = now - session.last_seen
            if idle is not None and quiet_for > idle and not session.in_flight:
                self._end_session(session, f"idle for {quiet_for:.1f}s")
            elif quiet_for > _PROBE_INTERVAL_S and not self._alive(session.identity):
                self._end_session(session, "its client vanished")
        if self._processes:
            for session in list(self._workers.values()):
                if session.process is not None and not session.process.is_alive():
                    self._worker_died(session)
        self._release_lone_session()

    # -- cleanup ------------------------------------------------------------------------
    def _close_runner(self, runner: EnvRunner | None) -> None:
        if runner is None or id(runner.env) in self._closed_envs:
            return
        self._closed_envs.add(id(runner.env))
        timeout = self.options.close_timeout_seconds
        if timeout is None:
            _close_quietly(runner)
            return
        closer = threading.Thread(target=_close_quietly, args=(runner,), daemon=True)
        closer.start()
        closer.join(timeout)
        if closer.is_alive():
            log.warning("env.close() did not finish within %.1fs; moving on", timeout)

    def _stop_workers(self) -> None:
        """Stop every worker and wait for them (up to ``close_timeout_seconds``)."""
        for session in list(self._sessions.values()):
            self._end_session(session, "the server is shutting down")
        for session in list(self._workers.values()):
            self._end_session(session, "the server is shutting down")
        timeout = self.options.close_timeout_seconds
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._workers:
            wait_ms = 100 if deadline is None else max(0, min(100, int((deadline - time.monotonic()) * 1000)))
            if self._backend.poll(wait_ms):
                frames = recv_frames(self._backend)
                session = self._workers.get(frames[0])
                if session is not None and len(frames) == 2 and frames[1] == READY:
                    self._end_session(session, "the server is shutting down")  # it missed the first stop
                elif session is not None and len(frames) == 2 and frames[1] == DONE:
                    self._worker_done(session)
                elif session is not None and len(frames) == 2 and frames[1] == RELEASED:
                    self._worker_released(session)  # it left before the stop: closes the env
            for session in list(self._workers.values()):
                if session.process is not None and not session.process.is_alive():
                    self._worker_done(session)
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("%d session(s) did not close within %.1fs; moving on", len(self._workers), timeout)
                break
        for session in self._workers.values():
            if session.process is not None:
                session.process.kill()
                session.process.join(5.0)

    def _cleanup(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        try:
            self._stop_workers()
        finally:
            self._close_runner(self._spare)
            self._close_runner(self._shared_runner)
            self._socket.close(linger=0)
            self._backend.close(linger=0)
            self._security.close()
            self._remove_backend_dir()
            if self._ipc_file is not None:
                remove_ipc_file(*self._ipc_file)
            self._stopped.set()


def _close_quietly(runner: EnvRunner) -> None:
    try:
        runner.close()
    except Exception:
        log.exception("env.close() raised")


__all__ = ["ISOLATION_MODES", "EnvServer", "ServeOptions", "is_vector_env"]
