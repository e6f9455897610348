"""Protocol constants and the mapping between error replies and typed exceptions."""

from __future__ import annotations

import traceback as _traceback
from typing import Any

from rlmesh.errors import (
    BadRequestError,
    EndpointConnectionError,
    EnvBusyError,
    InvalidActionError,
    ProtocolError,
    ProtocolVersionError,
    RemoteEnvError,
    RLMeshError,
    ServerFullError,
    ServerShuttingDownError,
    SessionClosedError,
)

PROTOCOL_VERSION = 1

# Requests (client -> server).
HELLO = "hello"
RESET = "reset"
STEP = "step"
RENDER = "render"
CLOSE = "close"
SHUTDOWN = "shutdown"
OPS = frozenset({HELLO, RESET, STEP, RENDER, CLOSE, SHUTDOWN})

# Reply kinds (server -> client). PROBE is an unsolicited liveness check clients ignore.
OK = "ok"
ERROR = "error"
PROBE = "probe"

# Error codes carried in error replies: each is the ``code`` of the error class it rebuilds.
E_PROTOCOL = ProtocolError.code
E_VERSION = ProtocolVersionError.code
E_INVALID_ACTION = InvalidActionError.code
E_ENV = RemoteEnvError.code
E_BUSY = EnvBusyError.code
E_FULL = ServerFullError.code
E_NO_SESSION = SessionClosedError.code
E_SHUTTING_DOWN = ServerShuttingDownError.code
E_BAD_REQUEST = BadRequestError.code

# The error types a reply can name; an unknown code reads as a protocol error.
ERROR_TYPES: dict[str, type[RLMeshError]] = {
    cls.code: cls
    for cls in (
        ProtocolError,
        ProtocolVersionError,
        InvalidActionError,
        RemoteEnvError,
        EnvBusyError,
        ServerFullError,
        SessionClosedError,
        ServerShuttingDownError,
        BadRequestError,
    )
}


def error_payload(
    code: str, message: str, error: BaseException | None = None, *, traceback: bool = True
) -> dict[str, Any]:
    """The body of an error reply: the exception's type, and its traceback when ``traceback``."""
    payload: dict[str, Any] = {"code": code, "message": message}
    if error is not None:
        payload["remote_type"] = f"{type(error).__module__}.{type(error).__qualname__}"
        if traceback:
            payload["traceback"] = "".join(_traceback.format_exception(error))
    return payload


def reply_for(error: BaseException, traceback: bool = True) -> dict[str, Any]:
    """The error reply body for an exception raised while serving a request.

    rlmesh errors carry their own code; anything else was raised by the env (with its
    traceback when ``traceback``).
    """
    if isinstance(error, RLMeshError) and error.code in ERROR_TYPES and not isinstance(error, RemoteEnvError):
        return error_payload(error.code, str(error))
    return error_payload(E_ENV, f"{type(error).__name__}: {error}", error, traceback=traceback)


def error_from_payload(payload: Any, endpoint: str) -> RLMeshError:
    """The typed exception for an error reply received from ``endpoint``."""
    if not isinstance(payload, dict):
        return ProtocolError(f"malformed error reply from {endpoint}: {payload!r:.200}")
    cls = ERROR_TYPES.get(payload.get("code"), ProtocolError)  # type: ignore[arg-type]
    message = str(payload.get("message", "unknown error"))
    if cls is RemoteEnvError:
        return RemoteEnvError(
            message,
            remote_type=str(payload.get("remote_type", "")),
            remote_traceback=str(payload.get("traceback", "")),
        )
    if issubclass(cls, EndpointConnectionError | ProtocolError):
        message = f"{endpoint}: {message}"
    return cls(message)
