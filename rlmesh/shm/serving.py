"""The server side of one session's fast path: offer a channel at the handshake, serve it.

A session worker owns one :class:`SessionFastPath`. The handshake asks it for an offer; from
then on the worker polls :attr:`SessionFastPath.fd` beside its socket and, when
:meth:`SessionFastPath.has_request` says so, answers through :meth:`SessionFastPath.serve`.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from rlmesh.codec import DEFAULT_LIMITS, Limits
from rlmesh.record import StepRecord
from rlmesh.shm.channel import ServerChannel, space_bytes
from rlmesh.shm.doorbell import RECHECK_SECONDS, Spinner, worker_spinner
from rlmesh.shm.region import Layout
from rlmesh.specs import EnvContract

log = logging.getLogger("rlmesh.server")

RECHECK_MS = max(1, int(RECHECK_SECONDS * 1000))


class Worker(Protocol):
    """What the fast path needs of a session worker (:class:`rlmesh.sessions.SessionWorker`)."""

    def answer(self, read: Any) -> list[Any]: ...
    def step(self, action: Any) -> Any: ...
    def ok_reply(self, request_id: int, payload: Any) -> list[Any]: ...
    def error_reply(self, request_id: int, error: BaseException) -> list[Any]: ...


class SessionFastPath:
    """One session's shared-memory channel on the server side.

    Args:
        socket_path: The endpoint's unix socket path; the region is created beside it.
        contract: The served contract, which sizes the region's areas.
        limits: Bounds on received requests.
    """

    def __init__(self, socket_path: str, contract: EnvContract, limits: Limits = DEFAULT_LIMITS) -> None:
        self.socket_path = socket_path
        self.contract = contract
        self.limits = limits
        self.channel: ServerChannel | None = None
        self.spinner = Spinner(0.0)
        self._served = False  # a request was served since the last doze
        self._dozing = False  # the next sleep is the first since requests stopped

    def offer(self, hello: dict[str, Any]) -> dict[str, Any] | None:
        """Create a channel if the client's handshake asks for one; the offer to send, or None."""
        if not hello.get("shared_memory"):
            return None
        self.close()  # a repeated handshake replaces the channel
        lanes = self.contract.num_envs or 1
        layout = Layout.for_messages(
            space_bytes(self.contract.action_space) * lanes, space_bytes(self.contract.observation_space) * lanes
        )
        try:
            self.channel = ServerChannel.offer(self.socket_path, layout)
        except OSError as error:
            log.info("serving over ZeroMQ only: cannot create a shared-memory region: %s", error)
            return None
        if hello.get("step_records"):
            self.channel.use_records(StepRecord.for_contract(self.contract))
        self.spinner = worker_spinner(hello.get("pid"))
        return {**self.channel.offer_payload(), "step_records": self.channel.record is not None}

    @property
    def fd(self) -> int | None:
        """The doorbell to poll for requests, or None without a channel."""
        return None if self.channel is None else self.channel.fd

    def has_request(self, spin: bool = True) -> bool:
        """Whether a request waits in the channel (after a short adaptive spin when ``spin``).

        With ``spin``, a False answer means the caller is about to sleep in poll (for at most
        :meth:`sleep_ms`): the client is told, so that it rings the doorbell and does not
        spin for a reply that first needs this side woken up (on a busy machine the woken
        worker would wait for the spinning client's core).
        """
        channel = self.channel
        if channel is None:
            return False
        channel.set_awake()
        if channel.wait(self.spinner) if spin else channel.pending():
            self._served = True
            return True
        if not spin:
            return False
        if channel.doze():
            self._served = True
            return True
        self._dozing, self._served = self._served, False
        return False

    def sleep_ms(self, longest: int | None) -> int | None:
        """How long the caller may sleep in poll: briefly right after dozing off, then ``longest``."""
        if not self._dozing:
            return longest
        self._dozing = False  # later sleeps without a request between them are long
        return RECHECK_MS if longest is None else min(longest, RECHECK_MS)

    def serve(self, worker: Worker) -> list[Any] | None:
        """Answer the waiting request with ``worker``, replying in place.

        Returns:
            The reply frames when they must go over the socket instead (too large for the
            region, or the session closed while answering), else None.
        """
        channel = self.channel
        assert channel is not None
        if channel.holds_step():
            frames = self._serve_step(channel, worker)
            if frames is None:
                return None
        else:
            frames = worker.answer(lambda: channel.receive(self.limits))
        if self.channel is channel and channel.reply(frames):
            return None
        return frames

    def _serve_step(self, channel: ServerChannel, worker: Worker) -> list[Any] | None:
        """Answer a step record: as a record when the reply fits one, else its encoded frames."""
        request_id = 0
        try:
            request_id, action = channel.receive_step()
            payload = worker.step(action)
        except Exception as error:
            return worker.error_reply(request_id, error)
        if self.channel is channel and channel.reply_step(payload):
            return None
        return worker.ok_reply(request_id, payload)

    def close(self) -> None:
        """Close the channel (its files are gone once the client mapped it). Idempotent."""
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()
