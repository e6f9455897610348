"""Owned sandbox sessions: a hardened container running the env server plus its client.

``SandboxEnvBase`` and ``SandboxVectorEnvBase`` are generic over observation and action types
and compose a remote client (``client_class``, set by each backend's concrete class). The
constructor validates everything (source, flags, vector options, JSON kwargs) before any
Docker work, builds or reuses the image, starts the container, waits for the server's ready
file, then connects ``self.client``. Closing, garbage collection, interpreter exit and
Ctrl-C remove the container and its socket directory.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, Self, TypeVar

from rlmesh.sandbox.options import SandboxSettings, sandbox_keywords
from rlmesh.sandbox.sources import SandboxSource, parse_source
from rlmesh.sources import VECTORIZATION_MODES

__all__ = ["SandboxEnvBase", "SandboxVectorEnvBase"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


def _json_kwargs(kwargs: Mapping[str, Any], name: str) -> list[str]:
    """``--kwarg key=<json>`` options; TypeError naming the parameter for non-JSON values."""
    options = []
    for key, value in kwargs.items():
        if not key.isidentifier():
            raise ValueError(f"{name} keys must be Python identifiers, got {key!r}")
        try:
            encoded = json.dumps(value, allow_nan=True)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name}[{key!r}] must be JSON-serialisable to reach the sandboxed env "
                f"constructor, got {type(value).__name__}: {value!r} ({exc})"
            ) from exc
        options += ["--kwarg", f"{key}={encoded}"]
    return options


def _parse(source: str, settings: SandboxSettings) -> SandboxSource:
    return parse_source(
        source, trust_remote_code=settings.trust_remote_code, allow_unpinned_hf=settings.allow_unpinned_hf
    )


def _cleanup(docker_client: Any, container_id: str | None, socket_dir: str | None) -> None:
    from rlmesh.sandbox.container import remove_sandbox

    try:
        remove_sandbox(docker_client, container_id, socket_dir)
    finally:
        docker_client.close()


class _SandboxSession(Generic[ObsT, ActT]):
    """Shared machinery of the single and vector sandbox sessions."""

    client_class: ClassVar[type]
    client: Any

    def _start(self, source: str, serve_options: list[str], settings: SandboxSettings) -> None:
        from rlmesh.sandbox._docker import docker_client
        from rlmesh.sandbox.container import (
            SandboxStartupError,
            container_logs,
            reap_orphans,
            start_container,
        )
        from rlmesh.sandbox.image import ensure_image
        from rlmesh.sandbox.wheel import resolve_package

        # Everything is validated before any Docker work.
        self._source = parsed = _parse(source, settings)
        package = resolve_package(settings.rlmesh_package)
        client_class = getattr(type(self), "client_class", None)
        if client_class is None:
            raise TypeError(
                f"{type(self).__name__} has no client_class; use a concrete class such as rlmesh.numpy.SandboxEnv"
            )
        self._finalizer: weakref.finalize | None = None
        self._started = None
        limits = settings.limits
        docker = docker_client()
        try:
            reap_orphans(docker)
            self._image = ensure_image(
                docker,
                parsed,
                base_image=settings.base_image,
                rlmesh_package=package,
                packages=settings.packages,
                imports=settings.imports,
            )
            started = start_container(
                docker,
                self._image.tag,
                [parsed.target, *serve_options],
                source=parsed.raw,
                limits=limits,
                timeout=settings.connect_timeout_seconds,
            )
        except BaseException:
            docker.close()
            raise
        self._started = started
        self._finalizer = weakref.finalize(self, _cleanup, docker, started.container_id, started.socket_dir)
        try:
            self.client = client_class(
                started.address,
                connect_timeout_seconds=max(float(settings.connect_timeout_seconds), 5.0),
                request_timeout_seconds=settings.request_timeout_seconds,
            )
        except BaseException as exc:
            logs = container_logs(docker, started.container_id)
            self._finalizer()
            if isinstance(exc, Exception):
                raise SandboxStartupError(
                    f"could not connect to the sandbox server for {parsed.raw!r}: {exc}\n"
                    f"last container log lines:\n{logs}"
                ) from exc
            raise

    # ---------------------------------------------------------------- inspection

    @property
    def source(self) -> str:
        """The source string this session was created from."""
        return self._source.raw

    @property
    def image(self) -> str:
        """Tag of the sandbox image (``rlmesh-sandbox:<hash>``)."""
        return self._image.tag

    @property
    def image_cached(self) -> bool:
        """True when an existing image was reused instead of built."""
        return self._image.cached

    @property
    def image_seconds(self) -> float:
        """Seconds spent resolving (and maybe building) the image."""
        return self._image.build_seconds

    @property
    def container_id(self) -> str:
        """Docker id of the container running the env server."""
        return self._started.container_id if self._started else ""

    @property
    def address(self) -> str:
        """Host-side ``ipc://`` address of the env server."""
        return self._started.address if self._started else ""

    @property
    def closed(self) -> bool:
        """True once the session was closed (or collected)."""
        finalizer = self.__dict__.get("_finalizer")
        return finalizer is None or not finalizer.alive

    # ---------------------------------------------------------------- delegation

    @property
    def observation_space(self) -> Any:
        """The client's observation space."""
        return self.client.observation_space

    @property
    def action_space(self) -> Any:
        """The client's action space."""
        return self.client.action_space

    @property
    def env_contract(self) -> Any:
        """The contract the server announced at handshake."""
        return self.client.env_contract

    def reset(self, *, seed: Any = None, options: Any = None) -> Any:
        """Reset the remote environment (Gymnasium semantics)."""
        return self.client.reset(seed=seed, options=options)

    def step(self, action: Any) -> Any:
        """Step the remote environment (Gymnasium semantics)."""
        return self.client.step(action)

    def render(self) -> Any:
        """Render a frame from the remote environment."""
        return self.client.render()

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes not found normally: forward to the client.
        if name.startswith("__") or "client" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["client"], name)

    def close(self) -> None:
        """Close the client, then remove the container and its socket directory (idempotent)."""
        client = self.__dict__.pop("client", None)
        try:
            if client is not None:
                client.close()
        finally:
            finalizer = self.__dict__.get("_finalizer")
            if finalizer is not None:
                finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"container={self.container_id[:12]}"
        parsed = self.__dict__.get("_source")
        return f"{type(self).__name__}({parsed.raw if parsed else None!r}, {state})"


class SandboxEnvBase(_SandboxSession[ObsT, ActT]):
    """Owned sandbox session for one environment.

        Subclasses set ``client_class`` to a remote env client (``rlmesh.numpy.RemoteEnv``, ...).

        Args:
            source: Gymnasium id, ``gym://`` id, pinned ``hf://org/repo@<sha>:suite/task``, or
                ``py://module:callable`` for local code.
    {keywords}
            **gym_make_kwargs: JSON-serialisable keyword arguments for the env constructor.

        Raises:
            ValueError: A malformed or refused source or option (before any Docker work).
            SandboxBuildError: The image could not be built.
            SandboxStartupError: The container did not become ready.
    """

    @sandbox_keywords
    def __init__(self, source: str, *, settings: SandboxSettings, **gym_make_kwargs: Any) -> None:
        self._start(source, _json_kwargs(gym_make_kwargs, "gym_make_kwargs"), settings)


class SandboxVectorEnvBase(_SandboxSession[ObsT, ActT]):
    """Owned sandbox session for a vector of environments served from one container.

        Subclasses set ``client_class`` to a remote vector client (``rlmesh.numpy.RemoteVectorEnv``).

        Args:
            source: Gymnasium id, ``gym://`` id, pinned ``hf://org/repo@<sha>:suite/task``, or
            ``py://module:callable`` for local code.
            num_envs: Number of environment instances (at least 2).
            vectorization_mode: ``"sync"`` or ``"async"`` vectorization inside the sandbox.
    {keywords}
            **env_make_kwargs: JSON-serialisable keyword arguments for each env constructor.

        Raises:
            ValueError: A malformed or refused source or option (before any Docker work).
            SandboxBuildError: The image could not be built.
            SandboxStartupError: The container did not become ready.
    """

    @sandbox_keywords
    def __init__(
        self,
        source: str,
        num_envs: int,
        vectorization_mode: str = "sync",
        *,
        settings: SandboxSettings,
        **env_make_kwargs: Any,
    ) -> None:
        if not isinstance(num_envs, int) or isinstance(num_envs, bool) or num_envs < 2:
            raise ValueError(
                f"num_envs must be an int >= 2 for SandboxVectorEnv, got {num_envs!r}; "
                "use SandboxEnv for a single environment"
            )
        if vectorization_mode not in VECTORIZATION_MODES:
            raise ValueError(f"vectorization_mode must be one of {VECTORIZATION_MODES}, got {vectorization_mode!r}")
        options = [
            "--num-envs",
            str(num_envs),
            "--vectorization-mode",
            vectorization_mode,
            *_json_kwargs(env_make_kwargs, "env_make_kwargs"),
        ]
        self._start(source, options, settings)

    @property
    def num_envs(self) -> int:
        """Number of environments served."""
        return self.client.num_envs

    @property
    def single_observation_space(self) -> Any:
        """Observation space of one lane."""
        return self.client.single_observation_space

    @property
    def single_action_space(self) -> Any:
        """Action space of one lane."""
        return self.client.single_action_space


def _with_keywords(doc: str) -> str:
    """``doc`` with its ``{keywords}`` line replaced by the sandbox keywords' Args entries."""
    args = re.search(r"^( *)Args:$", doc, re.MULTILINE)
    indent = (args[1] if args else "") + "    "
    return re.sub(r"^ *\{keywords\}$", lambda _: SandboxSettings.docs(indent), doc, flags=re.MULTILINE)


SandboxEnvBase.__doc__ = _with_keywords(SandboxEnvBase.__doc__ or "")
SandboxVectorEnvBase.__doc__ = _with_keywords(SandboxVectorEnvBase.__doc__ or "")
