"""Typed errors. Each subclasses the built-in exception users already catch."""

from __future__ import annotations


class RLMeshError(Exception):
    """Base class of every rlmesh error."""


class EndpointConnectionError(RLMeshError, ConnectionError):
    """An endpoint could not be reached, refused the session, or went away."""


class EnvBusyError(EndpointConnectionError):
    """The endpoint serves one environment object and another client holds it."""


class EndpointTimeoutError(RLMeshError, TimeoutError):
    """A request got no reply within its timeout."""


class ProtocolError(RLMeshError, ValueError):
    """A message was malformed, too large, or spoke another protocol version."""


class BadRequestError(RLMeshError, ValueError):
    """The server rejected a request argument (a seed, options, an unknown op)."""


class InvalidActionError(RLMeshError, ValueError):
    """An action does not belong to the environment's action space."""


class RemoteEnvError(RLMeshError, RuntimeError):
    """The remote environment raised; carries the remote type name and traceback.

    Attributes:
        remote_type: Qualified name of the exception raised on the server.
        remote_traceback: The server-side traceback as text.
    """

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


def missing_extra(extra: str, module: str) -> ImportError:
    """An ImportError telling the user which extra installs ``module``."""
    return ImportError(f'{module} is required for this feature; install it with: pip install "rlmesh[{extra}]"')
