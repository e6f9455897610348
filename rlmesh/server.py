"""EnvServer: serve a Gymnasium env, vector env, or env factory on a ZeroMQ ROUTER socket."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from rlmesh import protocol as p
from rlmesh.addresses import ipc_path, resolve_address
from rlmesh.codec import DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_TENSORS, Limits, decode_frames, encode_message
from rlmesh.env_runner import EnvRunner, is_vector_env, plain_data
from rlmesh.errors import BadRequestError, InvalidActionError, ProtocolError
from rlmesh.tensor import Tensor
from rlmesh.transport import IN_PROCESS_ENDPOINTS, configure, shared_context

log = logging.getLogger("rlmesh.server")

_POLL_MS = 100
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
_PROBE_INTERVAL_S = 5.0


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
            sleeping (0 disables). Keeps the serving core awake for clients that step back to
            back, at the cost of CPU.
    """

    allow_remote_shutdown: bool = False
    idle_timeout_seconds: float | None = None
    drain_timeout_seconds: float | None = None
    close_timeout_seconds: float | None = None
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_tensors: int = DEFAULT_MAX_TENSORS
    busy_poll_seconds: float = 0.0

    def __post_init__(self) -> None:
        for name in ("idle_timeout_seconds", "drain_timeout_seconds", "close_timeout_seconds"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"{name} must be None or >= 0, got {value!r}")
        if not self.busy_poll_seconds >= 0:
            raise ValueError(f"busy_poll_seconds must be >= 0, got {self.busy_poll_seconds!r}")
        if self.max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {self.max_message_bytes!r}")


class _Session:
    __slots__ = ("last_seen", "runner")

    def __init__(self, runner: EnvRunner) -> None:
        self.runner = runner
        self.last_seen = time.monotonic()


def _as_factory(env: Any) -> Callable[[], Any] | None:
    if isinstance(env, str):
        env_id = env

        def make() -> Any:
            import gymnasium

            return gymnasium.make(env_id)

        return make
    if isinstance(env, type) or (callable(env) and not hasattr(env, "step")):
        return env
    return None


class EnvServer:
    """Serve an environment to remote clients.

    ``env`` may be a Gymnasium env (served to one client at a time), a Gymnasium vector env
    (same), or a factory: a callable or a Gymnasium id string that makes a fresh env for
    each client session, so several clients can run side by side.

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
        self._limits = Limits(self.options.max_message_bytes, self.options.max_tensors)
        self._factory = _as_factory(env)
        # The first env is made now: its spaces define the contract, and a factory that
        # cannot build an env, or an env whose spaces cannot cross the wire, fails here.
        first = self._factory() if self._factory is not None else env
        if not hasattr(first, "step") or not hasattr(first, "reset"):
            raise TypeError(f"EnvServer needs a Gymnasium env, vector env, or factory; got {type(env).__name__}")
        try:
            self._spare: EnvRunner | None = EnvRunner(first)
        except Exception:
            if self._factory is not None:
                first.close()
            raise
        self.contract = self._spare.contract
        self._shared_runner = None if self._factory is not None else self._spare
        self._owner: bytes | None = None
        self._sessions: dict[bytes, _Session] = {}
        self._closed_envs: set[int] = set()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False
        self._finished = False
        self._socket = configure(shared_context().socket(zmq.ROUTER))
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.MAXMSGSIZE, self.options.max_message_bytes + 4096)
        path_ = ipc_path(endpoint)
        if path_ and os.path.exists(path_):
            os.unlink(path_)  # a stale socket file left by a dead server
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as error:
            self._socket.close()
            self._close_runner(self._spare)
            raise OSError(f"cannot bind {endpoint}: {error}") from None
        self.address: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        IN_PROCESS_ENDPOINTS.add(self.address)

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
        socket = self._socket
        next_sweep = time.monotonic() + 1.0
        spin = self.options.busy_poll_seconds
        drain_deadline: float | None = None
        while True:
            if self._stop.is_set():
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + (self.options.drain_timeout_seconds or 0.0)
                if not self._sessions or time.monotonic() >= drain_deadline:
                    return
            if socket.poll(_POLL_MS):
                # Serve everything queued before polling again; EVENTS avoids a raised Again.
                while socket.getsockopt(_EVENTS) & _POLLIN or self._spin(spin):
                    self._handle(socket.recv_multipart())
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 1.0
                self._sweep(now)

    def _spin(self, seconds: float) -> bool:
        """Busy-wait up to ``seconds`` for the next request; whether one arrived."""
        if seconds <= 0:
            return False
        socket, clock = self._socket, time.perf_counter
        end = clock() + seconds
        while clock() < end:
            if socket.getsockopt(_EVENTS) & _POLLIN:
                return True
        return False

    def _handle(self, frames: list[bytes]) -> None:
        # Requests are small (actions), so the whole message is read at once; each tensor
        # frame is copied into an aligned buffer the env may keep.
        identity = frames[0]
        if len(frames) < 2:
            return  # an empty message: nothing to answer
        request_id = 0
        try:
            header, payload = decode_frames(frames[1:], Tensor.numpy, self._limits)
            request_id = header.request_id
            reply = self._dispatch(identity, header.kind, payload)
        except ProtocolError as error:
            self._send_error(identity, request_id, p.E_PROTOCOL, str(error))
            return
        except _Refusal as refusal:
            self._send_error(identity, request_id, refusal.code, str(refusal))
            return
        except InvalidActionError as error:
            self._send_error(identity, request_id, p.E_INVALID_ACTION, str(error))
            return
        except BadRequestError as error:
            self._send_error(identity, request_id, p.E_BAD_REQUEST, str(error))
            return
        except Exception as error:  # the env raised: report it, keep serving
            message = f"{type(error).__name__}: {error}"
            self._send_error(identity, request_id, p.E_ENV, message, error)
            return
        self._send(identity, p.OK, request_id, reply)

    def _dispatch(self, identity: bytes, op: str, payload: Any) -> Any:
        if op == p.STEP:
            return self._session(identity).runner.step(payload)
        if op == p.RESET:
            return self._session(identity).runner.reset(payload)
        if op == p.HELLO:
            return self._hello(identity, payload)
        if op == p.RENDER:
            return self._session(identity).runner.render()
        if op == p.CLOSE:
            self._end_session(identity)
            return None
        if op == p.PING:
            return None
        if op == p.SHUTDOWN:
            reason = payload.get("reason", "") if isinstance(payload, dict) else ""
            if not self.options.allow_remote_shutdown:
                return {"accepted": False, "message": "remote shutdown is disabled on this server"}
            log.info("remote shutdown requested: %s", reason)
            self._stop.set()
            return {"accepted": True, "message": "shutting down"}
        raise _Refusal(p.E_BAD_REQUEST, f"unknown op {op!r}; expected one of {sorted(p.OPS)}")

    def _session(self, identity: bytes) -> _Session:
        session = self._sessions.get(identity)
        if session is None:
            raise _Refusal(
                p.E_NO_SESSION, "no session for this client (the server may have restarted or closed it); reconnect"
            )
        session.last_seen = time.monotonic()
        return session

    def _hello(self, identity: bytes, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise ProtocolError("hello expects a dict payload")
        version = payload.get("protocol")
        if version != p.PROTOCOL_VERSION:
            raise _Refusal(
                p.E_VERSION, f"protocol version mismatch: client speaks {version!r}, server speaks {p.PROTOCOL_VERSION}"
            )
        if self._stop.is_set():
            raise _Refusal(p.E_SHUTTING_DOWN, "the server is shutting down")
        if identity not in self._sessions:
            self._sessions[identity] = _Session(self._runner_for(identity))
        return {"protocol": p.PROTOCOL_VERSION, "contract": self.contract.to_dict()}

    def _runner_for(self, identity: bytes) -> EnvRunner:
        if self._factory is None:
            if self._owner is not None and self._owner != identity and self._alive(self._owner):
                raise _Refusal(
                    p.E_BUSY,
                    "busy: this endpoint serves a single env object and another client holds it; "
                    "serve a factory (callable or env id) to give each client its own env",
                )
            if self._owner is not None and self._owner != identity:
                self._sessions.pop(self._owner, None)
            self._owner = identity
            assert self._shared_runner is not None
            return self._shared_runner
        if self._spare is not None:
            runner, self._spare = self._spare, None
            return runner
        env = self._factory()
        try:
            runner = EnvRunner(env)
        except Exception:
            env.close()
            raise
        if runner.contract != self.contract:
            self._close_runner(runner)
            raise RuntimeError(f"the env factory made an env with a different contract: {runner.contract}")
        return runner

    def _end_session(self, identity: bytes) -> None:
        session = self._sessions.pop(identity, None)
        if session is None:
            return
        if self._factory is None:
            if self._owner == identity:
                self._owner = None
        else:
            self._close_runner(session.runner)

    def _alive(self, identity: bytes) -> bool:
        """Probe a peer: with ROUTER_MANDATORY, a vanished peer fails with EHOSTUNREACH."""
        try:
            self._socket.send_multipart([identity, encode_message(p.PROBE, 0, None)[0]], zmq.NOBLOCK)
        except zmq.Again:
            return True  # connected but its queue is full
        except zmq.ZMQError:
            return False
        return True

    def _sweep(self, now: float) -> None:
        idle = self.options.idle_timeout_seconds
        for identity, session in list(self._sessions.items()):
            quiet_for = now - session.last_seen
            if idle is not None and quiet_for > idle:
                log.info("closing session idle for %.1fs", quiet_for)
                self._end_session(identity)
            elif quiet_for > _PROBE_INTERVAL_S and not self._alive(identity):
                self._end_session(identity)

    # -- replies ------------------------------------------------------------------------
    def _send(self, identity: bytes, kind: str, request_id: int, payload: Any) -> None:
        try:
            frames = encode_message(kind, request_id, payload)
        except (TypeError, ValueError) as error:
            try:  # an info dict with values that cannot cross the wire: send their repr
                frames = encode_message(kind, request_id, _sanitized(payload))
                log.warning("reply held values that cannot cross the wire; sent their repr: %s", error)
            except (TypeError, ValueError):
                self._send_error(
                    identity,
                    request_id,
                    p.E_ENV,
                    f"the env returned a value that cannot cross the wire: {error}",
                    error,
                )
                return
        try:
            self._socket.send_multipart([identity, *frames], copy=len(frames) == 1)
        except zmq.ZMQError as error:  # the client vanished: drop its session
            log.info("dropping reply to a vanished client: %s", error)
            self._end_session(identity)

    def _send_error(
        self, identity: bytes, request_id: int, code: str, message: str, error: BaseException | None = None
    ) -> None:
        self._send(identity, p.ERROR, request_id, p.error_payload(code, message, error))

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

    def _cleanup(self) -> None:
        with self._lock:
            if self._finished:
                return
            self._finished = True
        for identity in list(self._sessions):
            self._end_session(identity)
        self._close_runner(self._spare)
        self._close_runner(self._shared_runner)
        self._socket.close(linger=0)
        IN_PROCESS_ENDPOINTS.discard(self.address)
        path = ipc_path(self.address)
        if path and os.path.exists(path):
            try:
                os.unlink(path)
            except OSError:
                pass
        self._stopped.set()


class _Refusal(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _close_quietly(runner: EnvRunner) -> None:
    try:
        runner.close()
    except Exception:
        log.exception("env.close() raised")


def _sanitized(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _sanitized(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_sanitized(v) for v in value)
    if value is None or isinstance(value, bool | int | float | str | bytes | Tensor):
        return value
    data = plain_data(value)
    if hasattr(data, "dtype") and data.dtype.kind not in "biuf":
        return repr(value)
    return data if not isinstance(data, str) or isinstance(value, str) else repr(value)


__all__ = ["EnvServer", "ServeOptions", "is_vector_env"]
