"""CURVE authentication and encryption for endpoints, built on pyzmq's own machinery.

Keys are stored in pyzmq's certificate format (``zmq.auth.create_certificates``): ``NAME.key``
holds a public key, ``NAME.key_secret`` the public and the secret key. A CURVE server lists
the client public keys it accepts; one ZAP handler thread per process
(``zmq.auth.thread.ThreadAuthenticator``) checks every handshake against the list of the
server it reached.

This module also decides which endpoints count as local: loopback tcp and unix sockets.
Serving beyond them needs CURVE (or an explicit opt-out), and their error replies leave out
server tracebacks by default.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from rlmesh.transport import shared_context

log = logging.getLogger("rlmesh.security")

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
_KEY_LENGTH = 40  # a z85-encoded 32-byte key
_ZAP_BIND_RETRY_S = 2.0

KeySource = str | bytes | os.PathLike[str]
"""A z85 key (40 characters) or the path of a certificate file holding it."""


# -- keys -------------------------------------------------------------------------------------


def generate_keypair(directory: str | os.PathLike[str], name: str = "rlmesh") -> tuple[Path, Path]:
    """Write a new CURVE keypair in pyzmq's certificate format.

    The secret file is readable by its owner only (mode 0600) from the moment it exists.

    Args:
        directory: Where to write; created (mode 0700) when missing.
        name: File stem: ``NAME.key`` (public) and ``NAME.key_secret`` (secret).

    Returns:
        The paths of the public and the secret certificate.

    Raises:
        ValueError: ``name`` is empty or contains a path separator.
        FileExistsError: a certificate named ``name`` already exists there.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise ValueError(f"key name {name!r} must be a plain file name without path separators")
    target = Path(directory)
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    public, secret = target / f"{name}{PUBLIC_SUFFIX}", target / f"{name}{SECRET_SUFFIX}"
    for path in (public, secret):
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another --name or remove it")
    # Written in a private scratch directory (mode 0700) first, so the secret key is never
    # readable by others, then moved in.
    scratch = Path(tempfile.mkdtemp(prefix=".rlmesh-keygen-", dir=target))
    try:
        made_public, made_secret = zmq.auth.create_certificates(scratch, name)
        os.chmod(made_secret, 0o600)
        os.chmod(made_public, 0o644)
        os.replace(made_secret, secret)
        os.replace(made_public, public)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return public, secret


def load_secret_key(path: str | os.PathLike[str], role: str = "curve_secret_key") -> tuple[bytes, bytes]:
    """The ``(public, secret)`` z85 keys of a secret certificate file.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file holds no secret key (a public certificate, for instance).
    """
    file = Path(os.fspath(path))
    if not file.is_file():
        raise FileNotFoundError(f"{role}: no certificate file at {str(file)!r}")
    try:
        public, secret = zmq.auth.load_certificate(file)
    except ValueError:
        raise ValueError(f"{role}: {str(file)!r} is not a CURVE certificate (no public-key line)") from None
    if not secret:
        raise ValueError(
            f"{role}: {str(file)!r} holds no secret key; pass the {SECRET_SUFFIX} file that `rlmesh keygen` wrote"
        )
    return _checked_key(public, f"{role} {str(file)!r}"), _checked_key(secret, f"{role} {str(file)!r}")


def load_public_key(source: KeySource, role: str = "curve_server_key") -> bytes:
    """A z85 public key given as the key itself or as a certificate file (public or secret).

    Raises:
        FileNotFoundError: ``source`` is neither a 40-character key nor an existing file.
        ValueError: the file holds no valid public key.
    """
    if isinstance(source, bytes | str) and len(source) == _KEY_LENGTH and not os.path.exists(source):
        text = source.encode("ascii", "replace") if isinstance(source, str) else source
        return _checked_key(text, role)
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    file = Path(os.fspath(source))
    if not file.is_file():
        raise FileNotFoundError(f"{role}: {str(source)!r} is neither a 40-character z85 key nor a certificate file")
    try:
        public, _ = zmq.auth.load_certificate(file)
    except ValueError:
        raise ValueError(f"{role}: {str(file)!r} is not a CURVE certificate (no public-key line)") from None
    return _checked_key(public, f"{role} {str(file)!r}")


def load_authorized_keys(
    source: str | os.PathLike[str] | Iterable[KeySource], role: str = "curve_authorized_keys"
) -> frozenset[bytes]:
    """The client public keys a server accepts.

    Args:
        source: A directory (every ``*.key`` file in it), or a sequence of certificate
            paths and z85 keys.
        role: The parameter name used in error messages.

    Raises:
        ValueError: no key was found.
        FileNotFoundError: a listed path does not exist.
    """
    if isinstance(source, str | os.PathLike):
        directory = Path(os.fspath(source))
        if directory.is_dir():
            keys = frozenset(_checked_key(key, f"{role} in {str(directory)!r}") for key in _directory_keys(directory))
            if not keys:
                raise ValueError(f"{role}: no *{PUBLIC_SUFFIX} certificates in {str(directory)!r}")
            return keys
        items: list[KeySource] = [source]
    elif isinstance(source, bytes):
        items = [source]
    else:
        items = list(source)
    keys = frozenset(load_public_key(item, role) for item in items)
    if not keys:
        raise ValueError(f"{role}: got no keys; pass a directory of {PUBLIC_SUFFIX} files or a list of them")
    return keys


def _directory_keys(directory: Path) -> list[bytes]:
    return list(zmq.auth.load_certificates(directory))


def _checked_key(key: bytes, where: str) -> bytes:
    if len(key) != _KEY_LENGTH:
        raise ValueError(f"{where}: a CURVE key is {_KEY_LENGTH} z85 characters, got {len(key)}")
    try:
        z85.decode(key)
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{where}: {key[:8]!r}... is not a z85-encoded key") from None
    return key


# -- local endpoints ----------------------------------------------------------------------------


def is_local_endpoint(endpoint: str) -> bool:
    """Whether only this machine can reach ``endpoint``: a unix socket or loopback tcp.

    Host names other than ``localhost``, interface names and wildcards count as remote.
    """
    if endpoint.startswith("ipc://"):
        return True
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- client -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientCurve:
    """A client's CURVE keys: the server's public key and this client's keypair (z85)."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client; call before connecting."""
        socket.curve_serverkey = self.server_key
        socket.curve_publickey = self.public_key
        socket.curve_secretkey = self.secret_key

    def __repr__(self) -> str:  # never print the secret key
        return f"ClientCurve(server_key={self.server_key.decode()!r}, public_key={self.public_key.decode()!r})"


def client_curve(server_key: KeySource | None, secret_key: str | os.PathLike[str] | None) -> ClientCurve | None:
    """The CURVE settings of a client, or None when neither key is given.

    Args:
        server_key: The server's public key (z85 text) or a certificate file holding it.
        secret_key: This client's secret certificate file (from ``rlmesh keygen``).

    Raises:
        ValueError: only one of the two is given, or a key is malformed.
        FileNotFoundError: a key file does not exist.
    """
    if server_key is None and secret_key is None:
        return None
    if server_key is None or secret_key is None:
        missing = "curve_server_key" if server_key is None else "curve_secret_key"
        raise ValueError(
            f"CURVE needs both curve_server_key (the server's public key) and curve_secret_key "
            f"(this client's secret certificate); {missing} is missing"
        )
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    public, secret = load_secret_key(secret_key)
    return ClientCurve(load_public_key(server_key), public, secret)


HANDSHAKE_FAILED_EVENTS = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
"""Socket monitor events of a failed security handshake."""


def handshake_failure_message(endpoint: str, event: int, curve: ClientCurve | None) -> str:
    """Why a client's security handshake with ``endpoint`` failed, and what to do about it."""
    if curve is None:
        return (
            f"the handshake with {endpoint} failed: the server requires CURVE authentication (or speaks another "
            "security mechanism); connect with curve_server_key=<the server's public key> and "
            "curve_secret_key=<this client's secret certificate from `rlmesh keygen`>"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (
            f"{endpoint} requires CURVE authentication and refused this client's public key "
            f"{curve.public_key.decode()}: it is not among the server's authorised keys"
        )
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        return (
            f"the CURVE handshake with {endpoint} failed: the server does not use CURVE (or speaks another "
            "security mechanism); connect without curve_server_key/curve_secret_key, or serve with CURVE"
        )
    return (
        f"the CURVE handshake with {endpoint} failed: the server requires CURVE authentication but did not "
        f"answer to server key {curve.server_key.decode()}; check curve_server_key is the server's public key"
    )


# -- server -------------------------------------------------------------------------------------


class EndpointSecurity:
    """The security settings of one bound endpoint: CURVE or none, tracebacks or not.

    Build it with :meth:`for_endpoint` before binding (that is where an insecure non-local
    bind is refused), :meth:`apply` it to the socket, and :meth:`close` it with the socket.
    """

    def __init__(
        self, endpoint: str, send_tracebacks: bool, keypair: tuple[bytes, bytes] | None, clients: frozenset[bytes]
    ) -> None:
        self.endpoint = endpoint
        self.send_tracebacks = send_tracebacks
        self._keypair = keypair
        self._clients = clients
        self._domain: str | None = None

    @property
    def encrypted(self) -> bool:
        """Whether the endpoint uses CURVE (its traffic must not leave ZeroMQ)."""
        return self._keypair is not None

    @classmethod
    def for_endpoint(
        cls,
        endpoint: str,
        *,
        curve_secret_key: str | os.PathLike[str] | None = None,
        curve_authorized_keys: str | os.PathLike[str] | Iterable[KeySource] | None = None,
        allow_insecure: bool = False,
        send_tracebacks: bool | None = None,
    ) -> EndpointSecurity:
        """Check and load the settings for serving on ``endpoint``; nothing is bound.

        Raises:
            ValueError: a non-local tcp endpoint without CURVE and without ``allow_insecure``;
                only one of the two CURVE settings; malformed keys.
            FileNotFoundError: a key file or directory does not exist.
        """
        local = is_local_endpoint(endpoint)
        if (curve_secret_key is None) != (curve_authorized_keys is None):
            missing = "curve_authorized_keys" if curve_authorized_keys is None else "curve_secret_key"
            raise ValueError(
                "a CURVE server needs curve_secret_key (its secret certificate) and curve_authorized_keys "
                f"(the client public keys it accepts); {missing} is missing"
            )
        keypair: tuple[bytes, bytes] | None = None
        clients: frozenset[bytes] = frozenset()
        if curve_secret_key is not None and curve_authorized_keys is not None:
            if not zmq.has("curve"):
                raise RuntimeError("this libzmq was built without CURVE support")
            keypair = load_secret_key(curve_secret_key)
            clients = load_authorized_keys(curve_authorized_keys)
        elif not local:
            if not allow_insecure:
                raise ValueError(
                    f"refusing to serve {endpoint} without authentication: anyone who reaches it could drive "
                    "the env. Serve with CURVE (ServeOptions(curve_secret_key=..., curve_authorized_keys=...), "
                    "`rlmesh serve --curve-secret-key PATH --curve-authorized-keys DIR`; keys from `rlmesh keygen`), "
                    "bind a loopback or unix address, or opt out with ServeOptions(allow_insecure=True) / "
                    "--allow-insecure"
                )
            log.warning(
                "serving %s without authentication or encryption (allow_insecure=True): anyone who can reach "
                "it can drive the env",
                endpoint,
            )
        tracebacks = local if send_tracebacks is None else bool(send_tracebacks)
        return cls(endpoint, tracebacks, keypair, clients)

    @property
    def curve(self) -> bool:
        """Whether the endpoint requires CURVE."""
        return self._keypair is not None

    @property
    def public_key(self) -> bytes | None:
        """The server's z85 public key under CURVE (what clients pass as ``curve_server_key``)."""
        return None if self._keypair is None else self._keypair[0]

    def apply(self, socket: zmq.Socket) -> None:
        """Configure ``socket`` (of the shared context) before it binds."""
        if self._keypair is None or self._domain is not None:
            return
        self._domain = f"rlmesh-{uuid.uuid4().hex}"
        _AUTHENTICATOR.register(self._domain, self._clients)
        socket.curve_server = True
        socket.curve_secretkey = self._keypair[1]
        socket.zap_domain = self._domain.encode()
        # Without a ZAP handler libzmq would accept any client key: fail closed instead.
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)

    def close(self) -> None:
        """Stop accepting handshakes for this endpoint. Idempotent."""
        domain, self._domain = self._domain, None
        if domain is not None:
            _AUTHENTICATOR.unregister(domain)

    def __repr__(self) -> str:
        return f"EndpointSecurity({self.endpoint!r}, curve={self.curve}, send_tracebacks={self.send_tracebacks})"


class _KeyLists:
    """pyzmq credentials provider: the authorised client keys of each ZAP domain."""

    def __init__(self) -> None:
        self.keys: dict[str, frozenset[bytes]] = {}

    def callback(self, domain: str, client_key: bytes) -> bool:
        allowed = client_key in self.keys.get(domain, frozenset())
        if not allowed:
            log.warning("refused a CURVE client with an unlisted public key %s", client_key.decode("ascii", "replace"))
        return allowed


class _SharedAuthenticator:
    """One ZAP handler thread for the shared context, running while any CURVE endpoint exists.

    libzmq allows one ZAP handler per context; endpoints are told apart by ZAP domain.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys = _KeyLists()
        self._authenticator: ThreadAuthenticator | None = None

    def register(self, domain: str, clients: frozenset[bytes]) -> None:
        with self._lock:
            if self._authenticator is None or not self._authenticator.is_alive():
                self._authenticator = self._start()
            self._keys.keys[domain] = clients
            self._authenticator.configure_curve_callback(domain, credentials_provider=self._keys)

    def unregister(self, domain: str) -> None:
        with self._lock:
            self._keys.keys.pop(domain, None)
            authenticator = self._authenticator
            if authenticator is None:
                return
            # The provider entry is kept (its lookups then fail): removing it could race a handshake.
            if not self._keys.keys:
                self._authenticator = None
                authenticator.stop()

    def _start(self) -> ThreadAuthenticator:
        # A handler stopped a moment ago releases its inproc endpoint asynchronously: retry briefly.
        deadline = time.monotonic() + _ZAP_BIND_RETRY_S
        while True:
            authenticator = ThreadAuthenticator(shared_context(), log=logging.getLogger("rlmesh.security.zap"))
            try:
                authenticator.start()
                return authenticator
            except zmq.ZMQError as error:
                authenticator.stop()
                if error.errno != zmq.EADDRINUSE or time.monotonic() >= deadline:
                    raise RuntimeError(
                        "cannot start the CURVE authenticator: another ZAP handler is bound on the shared "
                        f"ZeroMQ context ({error})"
                    ) from None
            time.sleep(0.01)


_AUTHENTICATOR = _SharedAuthenticator()


__all__ = [
    "HANDSHAKE_FAILED_EVENTS",
    "ClientCurve",
    "EndpointSecurity",
    "client_curve",
    "handshake_failure_message",
    "generate_keypair",
    "is_local_endpoint",
    "load_authorized_keys",
    "load_public_key",
    "load_secret_key",
]
