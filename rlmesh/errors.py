"""Typed errors. Each subclasses the built-in exception users already catch."""

from __future__ import annotations

from typing import ClassVar


class RLMeshError(Exception):
    """Base class of every rlmesh error.

    Attributes:
        code: The wire code an error reply carries for this error (see ``rlmesh.protocol``).
    """

    code: ClassVar[str] = "protocol"


class EndpointConnectionError(RLMeshError, ConnectionError):
    """An endpoint could not be reached, refused the session, or went away."""

    code = "connection"


class EnvBusyError(EndpointConnectionError):
    """The endpoint serves one environment object and another client holds it."""

    code = "busy"


class ServerFullError(EndpointConnectionError):
    """The endpoint already serves as many sessions as it allows."""

    code = "full"


class SessionClosedError(EndpointConnectionError):
    """The server has no session for this client (it closed it, or restarted)."""

    code = "no_session"


class ServerShuttingDownError(EndpointConnectionError):
    """The server is shutting down and accepts no new session."""

    code = "shutting_down"


class EndpointTimeoutError(RLMeshError, TimeoutError):
    """A request got no reply within its timeout."""

    code = "timeout"


class ProtocolError(RLMeshError, ValueError):
    """A message was malformed, too large, or spoke another protocol version."""

    code = "protocol"


class ProtocolVersionError(ProtocolError):
    """The peer speaks another protocol version."""

    code = "version"


class BadRequestError(RLMeshError, ValueError):
    """The server rejected a request argument (a seed, options, an unknown op)."""

    code = "bad_request"


class InvalidActionError(RLMeshError, ValueError):
    """An action does not belong to the environment's action space."""

    code = "invalid_action"


class RemoteEnvError(RLMeshError, RuntimeError):
    """The remote environment raised; carries the remote type name and traceback.

    Attributes:
        remote_type: Qualified name of the exception raised on the server.
        remote_traceback: The server-side traceback as text.
    """

    code = "env"

    def __init__(self, message: str, *, remote_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        base = super().__str__()
        if self.remote_traceback:
            return f"{base}\n\nRemote traceback:\n{self.remote_traceback.rstrip()}"
        return base


class AsyncCallError(RLMeshError, RuntimeError):
    """A ``*_wait`` call without its ``*_async``, or a second ``*_async`` before the wait."""


class SandboxError(RLMeshError, RuntimeError):
    """A sandbox container could not be built, started, or reached."""

    code = "sandbox"


def missing_extra(extra: str, module: str) -> ImportError:
    """An ImportError telling the user which extra installs ``module``."""
    return ImportError(f'{module} is required for this feature; install it with: pip install "rlmesh[{extra}]"')
