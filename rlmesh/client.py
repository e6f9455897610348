"""Remote environment clients, generic over the backend bridge.

A backend binds these classes to its :class:`~rlmesh.bridges.Bridge` with one-line
subclasses (see ``rlmesh/numpy.py``); all client behaviour lives here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from rlmesh import protocol as p
from rlmesh.addresses import resolve_address
from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.connection import DEFAULT_BUSY_POLL_SECONDS, Connection
from rlmesh.errors import EndpointConnectionError, RLMeshError
from rlmesh.spaces import Space, batch_spec, space_from_spec
from rlmesh.specs import EnvContract

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")

_DETACH_TIMEOUT_S = 1.0


class _RemoteBase(Generic[ObsT, ActT]):
    """Connection, handshake and lifetime shared by single and vector clients."""

    bridge: ClassVar[Bridge] = TENSOR_BRIDGE
    _expects_vector: ClassVar[bool] = False

    def __init__(
        self,
        address: str | int | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | os.PathLike[str] | None = None,
        transport: str | None = None,
        connect_timeout_seconds: float = 10.0,
        request_timeout_seconds: float | None = None,
        validate_actions: bool = True,
        validate_observations: bool = False,
        busy_poll_seconds: float = DEFAULT_BUSY_POLL_SECONDS,
    ) -> None:
        self._connection: Connection | None = None
        endpoint = resolve_address(address, host=host, port=port, path=path, transport=transport)
        if not connect_timeout_seconds > 0:
            raise ValueError(f"connect_timeout_seconds must be positive, got {connect_timeout_seconds!r}")
        self.address = endpoint
        self.request_timeout_seconds = request_timeout_seconds
        self._connection = Connection(endpoint, busy_poll_seconds=busy_poll_seconds)
        try:
            hello = self._connection.request(
                p.HELLO,
                {"protocol": p.PROTOCOL_VERSION, "backend": self.bridge.name},
                timeout=connect_timeout_seconds,
                connecting=True,
            )
            self._contract = EnvContract.from_dict(hello["contract"])
            self._check_arity()
        except BaseException:
            self._detach_quietly()
            raise
        bridge = self.bridge
        self._decode = bridge.decode_leaf
        self._encode = bridge.encode_leaf
        self._action_check = self._make_checker(self._contract.action_space, validate_actions, "action")
        self._observation_check = self._make_checker(
            self._contract.observation_space, validate_observations, "observation"
        )

    def _make_checker(self, spec: Any, enabled: bool, role: str) -> Callable[[Any], None] | None:
        factory = self.bridge.make_checker
        if not enabled or factory is None:
            return None
        return factory(spec, self._contract.num_envs, role)

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
        return self._connection is None or self._connection.closed

    # -- requests -----------------------------------------------------------------------
    def _request(self, op: str, payload: Any) -> Any:
        connection = self._connection
        if connection is None or connection.closed:
            raise EndpointConnectionError(f"{type(self).__name__} for {self.address} is closed")
        return connection.request(
            op, payload, timeout=self.request_timeout_seconds, decode_leaf=self._decode, encode_leaf=self._encode
        )

    def _observed(self, observation: Any) -> Any:
        if self._observation_check is not None:
            self._observation_check(observation)
        return observation

    def render(self) -> Any:
        """The remote env's render output (frames decode like observations)."""
        return self._request(p.RENDER, None)

    def close(self) -> None:
        """Detach from the endpoint; the server keeps running. Idempotent."""
        self._detach_quietly()

    def shutdown(self, reason: str = "") -> bool:
        """Ask the server to shut down; returns whether it agreed. Closes this client."""
        try:
            reply = self._request(p.SHUTDOWN, {"reason": reason})
        finally:
            self._detach_quietly(send_close=False)
        return bool(reply.get("accepted")) if isinstance(reply, dict) else False

    def _detach_quietly(self, send_close: bool = True) -> None:
        connection, self._connection = self._connection, None
        if connection is None or connection.closed:
            return
        if send_close:
            try:
                connection.request(p.CLOSE, None, timeout=_DETACH_TIMEOUT_S)
            except (RLMeshError, OSError):
                pass
        connection.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        connection = getattr(self, "_connection", None)
        if connection is not None and not connection.closed:
            connection.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.address
        return f"{type(self).__name__}({self._contract.id if hasattr(self, '_contract') else '?'}, {state})"


class RemoteEnvBase(_RemoteBase[ObsT, ActT]):
    """A Gymnasium-style client for one remote environment.

    Args:
        address: Endpoint such as ``"tcp://127.0.0.1:5555"``, ``"127.0.0.1:5555"``, a port,
            or ``"unix:///tmp/env.sock"``.
        host: TCP host used when ``address`` is omitted.
        port: TCP port used when ``address`` is omitted.
        path: Unix socket path used when ``address`` is omitted.
        transport: ``"tcp"`` or ``"ipc"``/``"unix"``.
        connect_timeout_seconds: How long to wait for the endpoint's handshake.
        request_timeout_seconds: Per-request limit (None: wait, but a dead server still
            raises within a few seconds).
        validate_actions: Check actions locally when the backend provides a checker.
        validate_observations: Check decoded observations against the observation space.
        busy_poll_seconds: Spin up to this long for each reply before sleeping (default 1 ms;
            0 disables). Halves round-trip latency where thread wake-ups are slow, at the cost
            of a busy core while a reply is awaited.

    Raises:
        ConnectionError: the endpoint could not be reached within the connect timeout.
        ValueError: the endpoint serves a vector env.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
    """A Gymnasium-vector-style client for a remote vector environment.

    Takes the same arguments as :class:`RemoteEnvBase`. Lanes autoreset with Gymnasium's
    NEXT_STEP mode: the step after a lane finishes returns its reset observation.

    Raises:
        ConnectionError: the endpoint could not be reached within the connect timeout.
        ValueError: the endpoint serves a single env.
    """

    _expects_vector = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
        if isinstance(seed, list | tuple):
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} lanes; pass one per lane or a single int")
            seed = list(seed)
        observations, infos = self._request(p.RESET, {"seed": seed, "options": options})
        return self._observed(observations), infos

    def step(self, actions: ActT) -> tuple[ObsT, Any, Any, Any, dict[str, Any]]:
        """Step every lane with one batched ``(num_envs, ...)`` action (or a list per lane).

        Returns ``(observations, rewards, terminations, truncations, infos)``, batched.
        """
        if self._action_check is not None:
            self._action_check(actions)
        observations, rewards, terminations, truncations, infos = self._request(p.STEP, actions)
        return self._observed(observations), rewards, terminations, truncations, infos


__all__ = ["RemoteEnvBase", "RemoteVectorEnvBase"]
