"""Remote environment clients, generic over the backend bridge.

A backend binds these classes to its :class:`~rlmesh.bridges.Bridge` with one-line
subclasses (see ``rlmesh/numpy.py``); all client behaviour lives here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from rlmesh import protocol as p
from rlmesh.addresses import resolve_address
from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.checks import Checker, make_action_checker, make_observation_checker
from rlmesh.errors import EndpointConnectionError
from rlmesh.fanout import EndpointGroup
from rlmesh.security import KeySource, client_curve
from rlmesh.spaces import Space, batch_spec, space_from_spec
from rlmesh.specs import EnvContract

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


class _RemoteBase(Generic[ObsT, ActT]):
    """Connection, handshake and lifetime shared by single and vector clients.

    Args:
        address: Endpoint such as ``"tcp://127.0.0.1:5555"``, ``"127.0.0.1:5555"``, a port,
            or ``"unix:///tmp/env.sock"``; for a vector client also a list of addresses.
        host: TCP host used when ``address`` is omitted.
        port: TCP port used when ``address`` is omitted.
        path: Unix socket path used when ``address`` is omitted.
        transport: ``"tcp"`` or ``"ipc"``/``"unix"``.
        connect_timeout_seconds: How long to wait for the endpoint's handshake.
        request_timeout_seconds: Per-request limit (None: wait, but a dead server still
            raises within a few seconds).
        validate_actions: Check actions locally when the backend provides a checker.
        validate_observations: Check decoded observations against the observation space.
        busy_poll_seconds: Spin up to this long for each reply before sleeping (0 disables).
            Halves round-trip latency where thread wake-ups are slow, at the cost of a busy
            core while a reply is awaited; the client spins only while its replies have been
            coming within this window, and not on an oversubscribed machine. None
            (default): 1 ms for one endpoint, 0 for several joined ones, whose servers need
            the cores a spinning client would take.
        curve_server_key: The server's CURVE public key (z85 text or its certificate file);
            with ``curve_secret_key``, authenticates and encrypts the connection.
        curve_secret_key: This client's secret certificate file (``rlmesh keygen``); the
            server must list its public key.
        shared_memory: For a unix-socket endpoint, use the shared-memory data plane the
            server offers (the default): requests and replies are written in place in a
            region beside the socket instead of travelling through it. Arrays over 16 KiB
            may be decoded as views of that region; they stay valid for as long as they are
            referenced (later replies are written elsewhere). False (or
            ``RLMESH_SHARED_MEMORY=0`` in the environment) keeps every message on the socket.
        tcp_stream: For a tcp endpoint without CURVE, send steps over the plain TCP
            connection the server offers beside ZeroMQ (the default; :mod:`rlmesh.stream`):
            a step then skips ZeroMQ's I/O threads, about halving its round trip. False (or
            ``RLMESH_TCP_STREAM=0`` in the environment) keeps every message on ZeroMQ.
    """

    bridge: ClassVar[Bridge] = TENSOR_BRIDGE
    _expects_vector: ClassVar[bool] = False

    def __init__(
        self,
        address: str | int | Sequence[str] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | os.PathLike[str] | None = None,
        transport: str | None = None,
        connect_timeout_seconds: float = 10.0,
        request_timeout_seconds: float | None = None,
        validate_actions: bool = True,
        validate_observations: bool = False,
        busy_poll_seconds: float | None = None,
        curve_server_key: KeySource | None = None,
        curve_secret_key: str | os.PathLike[str] | None = None,
        shared_memory: bool = True,
        tcp_stream: bool = True,
    ) -> None:
        self._group: EndpointGroup | None = None
        joined = isinstance(address, list | tuple)
        endpoints = (
            self._resolve(address, host, port, path, transport)
            if joined
            else [
                resolve_address(address, host=host, port=port, path=path, transport=transport)  # type: ignore[arg-type]
            ]
        )
        if not connect_timeout_seconds > 0:
            raise ValueError(f"connect_timeout_seconds must be positive, got {connect_timeout_seconds!r}")
        curve = client_curve(curve_server_key, curve_secret_key)
        self.address = endpoints[0] if len(endpoints) == 1 else ", ".join(endpoints)
        self._group = EndpointGroup(
            endpoints,
            self.bridge,
            joined=joined,
            connect_timeout_seconds=connect_timeout_seconds,
            request_timeout_seconds=request_timeout_seconds,
            busy_poll_seconds=busy_poll_seconds,
            curve=curve,
            shared_memory=shared_memory,
            tcp_stream=tcp_stream,
        )
        self._contract = self._group.contract
        try:
            self._check_arity()
        except BaseException:
            self._detach_quietly()
            raise
        num_envs = self._contract.num_envs
        self._action_check: Checker | None = None
        self._observation_check: Checker | None = None
        if validate_actions and self.bridge.checks_locally:
            self._action_check = make_action_checker(self._contract.action_space, num_envs=num_envs)
        if validate_observations:
            self._observation_check = make_observation_checker(self._contract.observation_space, num_envs=num_envs)
        self._build_spaces()

    def _build_spaces(self) -> None:
        """Set the space attributes from the contract (single and vector clients differ)."""

    def _resolve(self, addresses: Sequence[Any], host: Any, port: Any, path: Any, transport: str | None) -> list[str]:
        if not self._expects_vector:
            raise TypeError(
                f"{type(self).__name__} connects to one endpoint, got a list of {len(addresses)}; "
                "join several endpoints with RemoteVectorEnv"
            )
        if not addresses:
            raise ValueError("expected at least one endpoint address, got an empty list")
        if host is not None or port is not None or path is not None:
            raise ValueError("host, port and path describe one endpoint; with a list, give full addresses")
        return [resolve_address(address, transport=transport) for address in addresses]

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every endpoint this client talks to, in lane order."""
        return self._live_group().addresses if self._group is not None else ()

    @property
    def request_timeout_seconds(self) -> float | None:
        """Per-request reply limit (None: wait, but a dead server still raises)."""
        return self._group.request_timeout_seconds if self._group is not None else None

    @request_timeout_seconds.setter
    def request_timeout_seconds(self, value: float | None) -> None:
        if self._group is not None:
            self._group.request_timeout_seconds = value

    def _check_arity(self) -> None:
        vector = self._contract.is_vector
        if vector and not self._expects_vector:
            raise ValueError(
                f"{self.address} serves a vector env ({self._contract.id}, num_envs={self._contract.num_envs}); "
                f"connect with RemoteVectorEnv instead of {type(self).__name__}"
            )
        if not vector and self._expects_vector:
            raise ValueError(
                f"{self.address} serves a single env ({self._contract.id}); connect with RemoteEnv "
                f"instead of {type(self).__name__}"
            )

    # -- contract -----------------------------------------------------------------------
    @property
    def env_contract(self) -> EnvContract:
        """What the endpoint serves (id, per-lane spaces, render mode, metadata, num_envs)."""
        return self._contract

    @property
    def spec(self) -> EnvContract:
        """Alias of :attr:`env_contract`."""
        return self._contract

    @property
    def metadata(self) -> dict[str, Any]:
        """The remote env's metadata."""
        return self._contract.metadata

    @property
    def render_mode(self) -> str | None:
        """The remote env's render mode."""
        return self._contract.render_mode

    @property
    def unwrapped(self) -> _RemoteBase[ObsT, ActT]:
        """This client (there is no wrapper stack on the client side)."""
        return self

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._group is None or self._group.closed

    # -- requests -----------------------------------------------------------------------
    def _live_group(self) -> EndpointGroup:
        group = self._group
        if group is None:
            raise EndpointConnectionError(f"{type(self).__name__} is closed")
        return group

    def _request(self, op: str, payload: Any) -> Any:
        return self._live_group().request(op, payload, type(self).__name__)

    def _observed(self, observation: Any) -> Any:
        if self._observation_check is not None:
            self._observation_check(observation)
        return observation

    def render(self) -> Any:
        """The remote env's render output (frames decode like observations)."""
        return self._live_group().render(type(self).__name__)

    def close(self) -> None:
        """Detach from the endpoint; the server keeps running. Idempotent."""
        self._detach_quietly()

    def shutdown(self, reason: str = "") -> bool:
        """Ask the server to shut down; returns whether it agreed. Closes this client."""
        return self._live_group().shutdown(reason, type(self).__name__)

    def _detach_quietly(self) -> None:
        group = self._group
        if group is not None:
            group.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self, _finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        # At interpreter exit module globals may already be gone, and the OS reclaims the
        # sockets and mappings anyway (the server unlinked the region files at mapping).
        group = getattr(self, "_group", None)
        if group is not None and not _finalizing():
            group.close_sockets()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.address
        return f"{type(self).__name__}({self._contract.id if hasattr(self, '_contract') else '?'}, {state})"


class RemoteEnvBase(_RemoteBase[ObsT, ActT]):
    """A Gymnasium-style client for one remote environment.

    Raises:
        ConnectionError: the endpoint could not be reached within the connect timeout, or
            refused the CURVE handshake (the message says why).
        ValueError: the endpoint serves a vector env, or only one CURVE key was given.
    """

    def _build_spaces(self) -> None:
        self.observation_space: Space[ObsT] = space_from_spec(self._contract.observation_space, self.bridge)
        self.action_space: Space[ActT] = space_from_spec(self._contract.action_space, self.bridge)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[ObsT, dict[str, Any]]:
        """Reset the remote env; returns ``(observation, info)``."""
        observation, info = self._request(p.RESET, {"seed": seed, "options": options})
        return self._observed(observation), info

    def step(self, action: ActT) -> tuple[ObsT, float, bool, bool, dict[str, Any]]:
        """Step the remote env; returns ``(observation, reward, terminated, truncated, info)``.

        Raises:
            InvalidActionError: the action is not in the action space (names both).
            RemoteEnvError: the env raised; carries the remote traceback.
        """
        if self._action_check is not None:
            self._action_check(action)
        observation, reward, terminated, truncated, info = self._request(p.STEP, action)
        return self._observed(observation), reward, terminated, truncated, info


class RemoteVectorEnvBase(_RemoteBase[ObsT, ActT]):
    """A Gymnasium-vector-style client for one remote vector env, or several endpoints joined.

    ``address`` may also be a list of
    addresses, each serving a vector or a single env, joined into one vector env whose lanes
    are the endpoints' lanes in order (``reset(seed=s)`` gives lane i the seed ``s + i``).
    Each call is sent to every endpoint before any reply is awaited, so endpoints step in
    parallel (CURVE keys, when given, are used with every endpoint). Lanes autoreset with
    Gymnasium's NEXT_STEP mode: the step after a lane finishes returns its reset observation.

    ``step_async``/``step_wait`` (and ``reset_async``/``reset_wait``) split a call in two so
    the caller can work while the endpoints step.

    Raises:
        ConnectionError: an endpoint could not be reached within the connect timeout.
        ValueError: a single address serves a single env, or joined endpoints serve
            different spaces (the message names the endpoint).
    """

    _expects_vector = True

    def _build_spaces(self) -> None:
        contract = self._contract
        assert contract.num_envs is not None
        self.num_envs: int = contract.num_envs
        self.single_observation_space: Space[Any] = space_from_spec(contract.observation_space, self.bridge)
        self.single_action_space: Space[Any] = space_from_spec(contract.action_space, self.bridge)
        self.observation_space: Space[ObsT] = space_from_spec(
            batch_spec(contract.observation_space, self.num_envs), self.bridge
        )
        self.action_space: Space[ActT] = space_from_spec(batch_spec(contract.action_space, self.num_envs), self.bridge)

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[ObsT, dict[str, Any]]:
        """Reset every lane; ``seed`` is one int (lanes get seed, seed+1, ...) or one per lane."""
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None) -> None:
        """Send :meth:`reset` to every endpoint and return at once; :meth:`reset_wait` gets the result.

        Raises:
            AsyncCallError: a call is already pending.
        """
        if isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} lanes; pass one per lane or a single int")
            seed = list(seed)
        self._live_group().send_reset(seed, options, type(self).__name__)

    def reset_wait(self) -> tuple[ObsT, dict[str, Any]]:
        """The ``(observations, infos)`` of the pending :meth:`reset_async`.

        Raises:
            AsyncCallError: no reset is pending.
        """
        observations, infos = self._live_group().wait("reset", type(self).__name__)
        return self._observed(observations), infos

    def step(self, actions: ActT) -> tuple[ObsT, Any, Any, Any, dict[str, Any]]:
        """Step every lane with one batched ``(num_envs, ...)`` action (or a list per lane).

        Returns ``(observations, rewards, terminations, truncations, infos)``, batched.
        """
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: ActT) -> None:
        """Send :meth:`step` to every endpoint and return at once; :meth:`step_wait` gets the result.

        Raises:
            AsyncCallError: a call is already pending.
            InvalidActionError: the actions are not in the action space.
        """
        if self._action_check is not None:
            self._action_check(actions)
        self._live_group().send_step(actions, type(self).__name__)

    def step_wait(self) -> tuple[ObsT, Any, Any, Any, dict[str, Any]]:
        """The result of the pending :meth:`step_async`, exactly what :meth:`step` returns.

        Raises:
            AsyncCallError: no step is pending.
            RemoteEnvError: an env raised (every endpoint's reply is collected first).
            EndpointConnectionError: an endpoint went away (the message names it).
        """
        observations, rewards, terminations, truncations, infos = self._live_group().wait("step", type(self).__name__)
        return self._observed(observations), rewards, terminations, truncations, infos


__all__ = ["RemoteEnvBase", "RemoteVectorEnvBase"]
