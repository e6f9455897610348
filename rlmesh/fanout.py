"""Sessions with one or more endpoints driven as one env: send to every endpoint, then wait.

A client holds an :class:`EndpointGroup`. With one endpoint it is a thin wrapper over the
connection (replies decode straight to backend values). With several, each endpoint serves a
contiguous range of lanes: requests go to every endpoint before any reply is awaited, so the
endpoints step in parallel, and replies are joined lane by lane (see :mod:`rlmesh.lanes`).
Single-env endpoints autoreset client-side with Gymnasium's NEXT_STEP rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlmesh import lanes
from rlmesh import protocol as p
from rlmesh.bridges import Bridge
from rlmesh.connection import DEFAULT_BUSY_POLL_SECONDS, Connection
from rlmesh.errors import AsyncCallError, EndpointConnectionError, RLMeshError
from rlmesh.security import ClientCurve
from rlmesh.specs import EnvContract
from rlmesh.tensor import Tensor

_DETACH_TIMEOUT_S = 1.0


def open_session(
    address: str,
    backend: str,
    *,
    connect_timeout_seconds: float,
    busy_poll_seconds: float,
    curve: ClientCurve | None = None,
    shared_memory: bool = True,
    tcp_stream: bool = True,
) -> tuple[Connection, EnvContract]:
    """Connect to ``address`` and shake hands; returns the connection and the endpoint's contract.

    Raises:
        EndpointConnectionError: the endpoint could not be reached within the timeout.
        ProtocolError: the endpoint speaks another protocol version.
    """
    connection = Connection(
        address, busy_poll_seconds=busy_poll_seconds, curve=curve, shared_memory=shared_memory, tcp_stream=tcp_stream
    )
    try:
        hello = connection.request(
            p.HELLO,
            {"protocol": p.PROTOCOL_VERSION, "backend": backend, **connection.hello_fields()},
            timeout=connect_timeout_seconds,
            connecting=True,
        )
        contract = EnvContract.from_dict(hello["contract"])
        connection.attach(hello.get("shared_memory"), contract)
        connection.use_record_frames(hello.get("socket_records") is True, contract)
        connection.attach_stream(hello.get("tcp_stream"))
        return connection, contract
    except BaseException:
        connection.close()
        raise


class _Member:
    """One endpoint of a group: its session and the lanes it serves."""

    __slots__ = ("address", "connection", "contract", "count", "needs_reset", "request_id", "start")

    def __init__(self, address: str, connection: Connection, contract: EnvContract, start: int) -> None:
        self.address = address
        self.connection = connection
        self.contract = contract
        self.start = start
        self.count = contract.num_envs  # None: a single env, one lane
        self.needs_reset = False  # a single env whose episode ended: the next step resets it
        self.request_id = 0


class EndpointGroup:
    """The sessions behind one client, with the send-then-wait cycle of ``*_async``/``*_wait``.

    Args:
        addresses: Resolved endpoint addresses, in lane order.
        bridge: The backend's leaf table.
        joined: Join the endpoints into one vector env even when there is only one (a list
            of addresses was given); otherwise a single address keeps its own contract.
        connect_timeout_seconds: Handshake limit per endpoint.
        request_timeout_seconds: Reply limit per request (None: wait).
        busy_poll_seconds: Reply spin time per connection; None: the client default (1 ms for
            one endpoint, none for several).
        curve: CURVE keys used with every endpoint (None: no CURVE).
        shared_memory: Use the shared-memory plane unix-socket endpoints offer.
        tcp_stream: Use the step stream tcp endpoints offer (:mod:`rlmesh.stream`).

    Raises:
        ValueError: the endpoints' spaces differ (names the first endpoint that differs).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        bridge: Bridge,
        *,
        joined: bool,
        connect_timeout_seconds: float,
        request_timeout_seconds: float | None,
        busy_poll_seconds: float | None,
        curve: ClientCurve | None = None,
        shared_memory: bool = True,
        tcp_stream: bool = True,
    ) -> None:
        if busy_poll_seconds is None:
            busy_poll_seconds = DEFAULT_BUSY_POLL_SECONDS if len(addresses) == 1 else 0.0
        self.bridge = bridge
        self.request_timeout_seconds = request_timeout_seconds
        self.members: list[_Member] = []
        self.pending: str | None = None
        try:
            start = 0
            for address in addresses:
                connection, contract = open_session(
                    address,
                    bridge.name,
                    connect_timeout_seconds=connect_timeout_seconds,
                    busy_poll_seconds=busy_poll_seconds,
                    curve=curve,
                    shared_memory=shared_memory,
                    tcp_stream=tcp_stream,
                )
                member = _Member(address, connection, contract, start)
                self.members.append(member)
                start += 1 if member.count is None else member.count
            self.contract = self._joined_contract(start) if joined else self.members[0].contract
        except BaseException:
            self.close()  # endpoints already joined get their session back at once
            raise
        # One vector endpoint: replies are already the batch, decoded straight to backend values.
        self.direct = len(self.members) == 1 and (not joined or self.members[0].count is not None)

    def _joined_contract(self, num_envs: int) -> EnvContract:
        first = self.members[0]
        for member in self.members[1:]:
            for role in ("observation_space", "action_space"):
                if getattr(member.contract, role) != getattr(first.contract, role):
                    raise ValueError(
                        f"endpoint {member.address} serves a different {role.replace('_', ' ')} than "
                        f"{first.address}: {getattr(member.contract, role)} != {getattr(first.contract, role)}; "
                        "every endpoint of one vector env must serve the same spaces"
                    )
        contract = first.contract
        return EnvContract(
            observation_space=contract.observation_space,
            action_space=contract.action_space,
            id=contract.id,
            render_mode=contract.render_mode,
            num_envs=num_envs,
            metadata=contract.metadata,
        )

    @property
    def addresses(self) -> tuple[str, ...]:
        """The endpoint addresses in lane order."""
        return tuple(member.address for member in self.members)

    @property
    def closed(self) -> bool:
        """Whether every session is closed."""
        return all(member.connection.closed for member in self.members)

    def _connection(self, member: _Member, owner: str) -> Connection:
        if member.connection.closed:
            raise EndpointConnectionError(f"{owner} for {member.address} is closed")
        return member.connection

    # -- one request, one endpoint ------------------------------------------------------
    def request(self, op: str, payload: Any, owner: str) -> Any:
        """A request to the only endpoint, decoded to backend values."""
        connection = self._connection(self.members[0], owner)
        bridge = self.bridge
        return connection.request(
            op,
            payload,
            timeout=self.request_timeout_seconds,
            decode_leaf=bridge.decode_leaf,
            encode_leaf=bridge.encode_leaf,
        )

    # -- send to all, then wait ---------------------------------------------------------
    def send_reset(self, seed: int | list[int | None] | None, options: dict[str, Any] | None, owner: str) -> None:
        """Send a reset to every endpoint; lane i gets ``seed + i`` or ``seed[i]``."""
        self._begin("reset", owner)
        try:
            if self.direct:
                self._send(self.members[0], p.RESET, {"seed": seed, "options": options}, owner)
                return
            for member in self.members:
                self._send(member, p.RESET, {"seed": _lane_seeds(seed, member), "options": options}, owner)
                member.needs_reset = False
        except BaseException:
            self.pending = None
            raise

    def send_step(self, actions: Any, owner: str) -> None:
        """Send each endpoint its lanes of ``actions`` (a reset instead for a finished single env)."""
        self._begin("step", owner)
        try:
            if self.direct:
                self._send(self.members[0], p.STEP, actions, owner)
                return
            spec, to_numpy = self.contract.action_space, self.bridge.to_numpy
            for member in self.members:
                if member.needs_reset:
                    self._send(member, p.RESET, {"seed": None, "options": None}, owner)
                else:
                    self._send(member, p.STEP, lanes.take(spec, actions, member.start, member.count, to_numpy), owner)
        except BaseException:
            self.pending = None
            raise

    def wait(self, op: str, owner: str) -> Any:
        """Wait for every endpoint's reply to the pending ``op`` and join them.

        Raises:
            AsyncCallError: no ``op`` is pending.
            RLMeshError: the first endpoint error, raised once every reply is in.
        """
        if self.pending != op:
            raise AsyncCallError(
                f"{owner}.{op}_wait() called without a pending {op}_async(); call {op}_async first"
                + (f" (a {self.pending}_async is pending)" if self.pending else "")
            )
        self.pending = None
        if self.direct:
            return self._receive(self.members[0], op, self.bridge.decode_leaf)
        replies: list[Any] = []
        failure: BaseException | None = None
        for member in self.members:
            try:
                replies.append(self._receive(member, op, Tensor.numpy))
            except RLMeshError as error:
                failure = failure or error
                replies.append(None)
        if failure is not None:
            raise failure
        return self._join_reset(replies) if op == "reset" else self._join_step(replies)

    def _begin(self, op: str, owner: str) -> None:
        if self.pending is not None:
            raise AsyncCallError(
                f"{owner}.{op}_async() called while a {self.pending}_async() is pending; "
                f"call {self.pending}_wait() first"
            )
        self.pending = op

    def _send(self, member: _Member, op: str, payload: Any, owner: str) -> None:
        connection = self._connection(member, owner)
        member.request_id = connection.send(op, payload, encode_leaf=self.bridge.encode_leaf)

    def _receive(self, member: _Member, op: str, decode_leaf: Any) -> Any:
        return member.connection.receive(
            op, member.request_id, timeout=self.request_timeout_seconds, decode_leaf=decode_leaf
        )

    # -- joining replies ----------------------------------------------------------------
    def _join_reset(self, replies: list[Any]) -> tuple[Any, dict[str, Any]]:
        members = self.members
        observations = [(reply[0], m.count) for reply, m in zip(replies, members, strict=True)]
        infos = [(reply[1], m.count) for reply, m in zip(replies, members, strict=True)]
        return self._finish(observations, infos)

    def _join_step(self, replies: list[Any]) -> tuple[Any, ...]:
        observations, rewards, terminations, truncations, infos = [], [], [], [], []
        for reply, member in zip(replies, self.members, strict=True):
            count = member.count
            if len(reply) == 2:  # the autoreset of a finished single env (NEXT_STEP)
                reply = [reply[0], 0.0, False, False, reply[1]]
                member.needs_reset = False
            elif count is None:
                member.needs_reset = bool(reply[2] or reply[3])
            observations.append((reply[0], count))
            rewards.append((reply[1], count))
            terminations.append((reply[2], count))
            truncations.append((reply[3], count))
            infos.append((reply[4], count))
        decode = self.bridge.decode_leaf
        observation, info = self._finish(observations, infos)
        return (
            observation,
            lanes.to_backend(lanes.join_arrays(rewards, "float64"), decode),
            lanes.to_backend(lanes.join_arrays(terminations, "bool"), decode),
            lanes.to_backend(lanes.join_arrays(truncations, "bool"), decode),
            info,
        )

    def _finish(self, observations: list[lanes.Part], infos: list[lanes.Part]) -> tuple[Any, dict[str, Any]]:
        decode = self.bridge.decode_leaf
        num_envs = self.contract.num_envs or 1
        observation = lanes.to_backend(lanes.join(self.contract.observation_space, observations), decode)
        return observation, lanes.to_backend(lanes.merge_infos(infos, num_envs), decode)

    # -- other ops ----------------------------------------------------------------------
    def render(self, owner: str) -> Any:
        """Render every endpoint; several endpoints give one list of frames in lane order."""
        if self.direct:
            return self.request(p.RENDER, None, owner)
        for member in self.members:
            member.request_id = self._connection(member, owner).send(p.RENDER, None)
        frames: list[Any] = []
        for member in self.members:
            reply = member.connection.receive(
                p.RENDER, member.request_id, timeout=self.request_timeout_seconds, decode_leaf=self.bridge.decode_leaf
            )
            if member.count is None or reply is None:
                frames.append(reply)
            else:
                frames.extend(reply)
        return frames

    def shutdown(self, reason: str, owner: str) -> bool:
        """Ask every endpoint to shut down, then close; whether all agreed."""
        accepted = True
        try:
            for member in self.members:
                reply = self._connection(member, owner).request(
                    p.SHUTDOWN, {"reason": reason}, timeout=self.request_timeout_seconds
                )
                accepted = accepted and isinstance(reply, dict) and bool(reply.get("accepted"))
        finally:
            self.close(send_close=False)
        return accepted

    def close(self, send_close: bool = True) -> None:
        """Detach from every endpoint (telling each, when ``send_close``); servers keep running."""
        self.pending = None
        for member in self.members:
            connection = member.connection
            if connection.closed:
                continue
            if send_close:
                try:
                    connection.request(p.CLOSE, None, timeout=_DETACH_TIMEOUT_S)
                except (RLMeshError, OSError):
                    pass
            connection.close()

    def close_sockets(self) -> None:
        """Close every socket without a goodbye (for garbage collection)."""
        for member in self.members:
            if not member.connection.closed:
                member.connection.close()


def _lane_seeds(seed: int | list[int | None] | None, member: _Member) -> Any:
    start, count = member.start, member.count
    if isinstance(seed, list):
        return seed[start] if count is None else seed[start : start + count]
    # A vector endpoint given one int seeds its lanes seed, seed+1, ... itself.
    return None if seed is None else seed + start


__all__ = ["EndpointGroup", "open_session"]
