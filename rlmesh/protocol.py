"""Protocol constants and the mapping between error replies and typed exceptions."""

from __future__ import annotations

import traceback
from typing import Any

from rlmesh.errors import (
    BadRequestError,
    EndpointConnectionError,
    EnvBusyError,
    InvalidActionError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
)

PROTOCOL_VERSION = 1

# Requests (client -> server).
HELLO = "hello"
RESET = "reset"
STEP = "step"
RENDER = "render"
CLOSE = "close"
SHUTDOWN = "shutdown"
PING = "ping"
OPS = frozenset({HELLO, RESET, STEP, RENDER, CLOSE, SHUTDOWN, PING})

# Reply kinds (server -> client). PROBE is an unsolicited liveness check clients ignore.
OK = "ok"
ERROR = "error"
PROBE = "probe"

# Error codes carried in error replies.
E_PROTOCOL = "protocol"
E_VERSION = "version"
E_INVALID_ACTION = "invalid_action"
E_ENV = "env"
E_BUSY = "busy"
E_NO_SESSION = "no_session"
E_SHUTTING_DOWN = "shutting_down"
E_BAD_REQUEST = "bad_request"


def error_payload(code: str, message: str, error: BaseException | None = None) -> dict[str, Any]:
    """The body of an error reply, with the remote traceback when there is an exception."""
    payload: dict[str, Any] = {"code": code, "message": message}
    if error is not None:
        payload["remote_type"] = f"{type(error).__module__}.{type(error).__qualname__}"
        payload["traceback"] = "".join(traceback.format_exception(error))
    return payload


def error_from_payload(payload: Any, endpoint: str) -> RLMeshError:
    """The typed exception for an error reply received from ``endpoint``."""
    if not isinstance(payload, dict):
        return ProtocolError(f"malformed error reply from {endpoint}: {payload!r:.200}")
    code = payload.get("code")
    message = str(payload.get("message", "unknown error"))
    if code == E_INVALID_ACTION:
        return InvalidActionError(message)
    if code == E_ENV:
        return RemoteEnvError(
            message,
            remote_type=str(payload.get("remote_type", "")),
            remote_traceback=str(payload.get("traceback", "")),
        )
    if code == E_BUSY:
        return EnvBusyError(f"{endpoint}: {message}")
    if code in (E_NO_SESSION, E_SHUTTING_DOWN):
        return EndpointConnectionError(f"{endpoint}: {message}")
    if code == E_BAD_REQUEST:
        return BadRequestError(message)
    return ProtocolError(f"{endpoint}: {message}")
