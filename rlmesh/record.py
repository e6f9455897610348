"""Steps as fixed-layout records: no per-step encoding when every leaf's place is known.

Records travel two ways: in place through a shared-memory channel (``rlmesh.shm``), and as
one ZeroMQ frame each way (:class:`RecordFrames`), negotiated at the handshake like the
channel's. A record frame starts with :data:`RECORD_TAG`, a byte no msgpack value starts
with, so it is never mistaken for an encoded message.

When the action and observation spaces are plain arrays (Box, Discrete, MultiDiscrete,
MultiBinary), both ends know from the contract where each byte of a step goes. The client
writes the action's bytes at the start of the request area; the server writes the
observation's bytes at the start of the reply slot, and reward, terminated and truncated
(one value each, or one per lane) into the reply header area. Nothing is packed or parsed.

A step whose values do not have exactly the contract's dtypes and shapes (a Python float for
a float32 Box, an env returning float64 observations, a non-empty info, ...) and every other
request or reply (reset, errors) use the channel's encoded messages, so a caller sees the same
values either way.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from rlmesh import protocol as p
from rlmesh.codec import Header
from rlmesh.errors import ProtocolError
from rlmesh.specs import BoxSpec, DiscreteSpec, EnvContract, MultiBinarySpec, MultiDiscreteSpec, SpaceSpec
from rlmesh.tensor import Tensor, aligned_empty

_ARRAY_SPECS = (BoxSpec, DiscreteSpec, MultiBinarySpec, MultiDiscreteSpec)
_REWARD = np.dtype(np.float64)
_FLAG = np.dtype(np.bool_)
# A single env's reward, terminated and truncated, packed.
ONE_LANE = struct.Struct("<d??")


def _array_layout(spec: SpaceSpec, lanes: int | None) -> tuple[tuple[int, ...], np.dtype] | None:
    if not isinstance(spec, _ARRAY_SPECS) or spec.dtype is None:
        return None
    shape = tuple(spec.shape) if lanes is None else (lanes, *spec.shape)
    return shape, np.dtype(spec.dtype)


class StepRecord:
    """Where a step's values lie in a channel, for one contract.

    Build with :meth:`for_contract`, which returns None when a space is not a plain array.

    Attributes:
        lanes: The lane count of a vector endpoint, None for a single env.
        action_shape, action_dtype: The action (batched for a vector endpoint).
        observation_shape, observation_dtype: The observation (batched likewise).
        header_bytes: Bytes of the reply header area used: reward, terminated, truncated.
    """

    def __init__(self, lanes: int | None, action: tuple[Any, np.dtype], observation: tuple[Any, np.dtype]) -> None:
        self.lanes = lanes
        self.action_shape, self.action_dtype = action
        self.observation_shape, self.observation_dtype = observation
        self.action_bytes = math.prod(self.action_shape) * self.action_dtype.itemsize
        self.observation_bytes = math.prod(self.observation_shape) * self.observation_dtype.itemsize
        count = 1 if lanes is None else lanes
        self.header_bytes = count * (_REWARD.itemsize + 2)
        # A scalar Discrete action may arrive as a Python int: within these bounds it fits.
        scalar_int = lanes is None and self.action_shape == () and self.action_dtype.kind in "iu"
        self._int_range = (np.iinfo(self.action_dtype).min, np.iinfo(self.action_dtype).max) if scalar_int else None

    @classmethod
    def for_contract(cls, contract: EnvContract) -> StepRecord | None:
        """The record layout of ``contract``'s steps, or None when its spaces need encoding."""
        action = _array_layout(contract.action_space, contract.num_envs)
        observation = _array_layout(contract.observation_space, contract.num_envs)
        if action is None or observation is None:
            return None
        return cls(contract.num_envs, action, observation)

    def fits(self, request_bytes: int, header_bytes: int, slot_bytes: int) -> bool:
        """Whether records fit areas of these sizes."""
        return (
            self.action_bytes <= request_bytes
            and self.header_bytes <= header_bytes
            and self.observation_bytes <= slot_bytes
        )

    # -- client: the action -------------------------------------------------------------
    def encode_action(self, action: Any, encode_leaf: Callable[[Any], Any] | None = None) -> tuple[Any, bool] | None:
        """``(value to write, whether it is a scalar)``, or None when ``action`` must be encoded.

        Only values of the contract's shape whose dtype widens exactly into the contract's
        qualify (they are cast as they are written), and a scalar (a Python int, a NumPy
        scalar or 0-d array) reaches the server as a Python number, so the server checks the
        very numbers an encoded request would have carried.
        """
        kind = type(action)
        if kind is int:
            bounds = self._int_range
            return (action, True) if bounds is not None and bounds[0] <= action <= bounds[1] else None
        if kind is not np.ndarray and not isinstance(action, np.generic):
            encoded = NotImplemented if encode_leaf is None else encode_leaf(action)
            if type(encoded) is not Tensor:
                return None
            array = encoded.numpy()
            if array.shape == self.action_shape and self._widens(array.dtype):
                return array, False  # a backend array crosses as an array, even 0-d
            return None
        if action.shape == self.action_shape and self._widens(action.dtype):
            return action, action.ndim == 0
        return None

    def _widens(self, dtype: np.dtype) -> bool:
        """Whether values of ``dtype`` become the action dtype exactly (int32 into int64, ...).

        Same kind only: the server checks the very same numbers before casting them anyway.
        """
        target = self.action_dtype
        return dtype == target or (dtype.kind == target.kind and np.can_cast(dtype, target, "safe"))

    # -- server: the reply --------------------------------------------------------------
    def reply_values(self, payload: Any) -> tuple[np.ndarray, Any, Any, Any] | None:
        """Observation, reward, terminated and truncated of a step reply, or None to encode it."""
        if type(payload) is not list or len(payload) != 5:
            return None
        observation, reward, terminated, truncated, info = payload
        if type(info) is not dict or info:
            return None
        if (
            type(observation) is not np.ndarray
            or observation.dtype != self.observation_dtype
            or observation.shape != self.observation_shape
        ):
            return None
        if self.lanes is None:
            if type(reward) is not float or type(terminated) is not bool or type(truncated) is not bool:
                return None
            return observation, reward, terminated, truncated
        for value, dtype in ((reward, _REWARD), (terminated, _FLAG), (truncated, _FLAG)):
            if type(value) is not np.ndarray or value.dtype != dtype or value.shape != (self.lanes,):
                return None
        return observation, reward, terminated, truncated

    # -- both ends: the reply header area ------------------------------------------------
    def lane_views(self, buffer: Any, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reward, terminated and truncated (one per lane) laid out in ``buffer`` at ``offset``."""
        count = self.lanes or 1
        return (
            np.ndarray((count,), _REWARD, buffer, offset),
            np.ndarray((count,), _FLAG, buffer, offset + 8 * count),
            np.ndarray((count,), _FLAG, buffer, offset + 9 * count),
        )

    def write_header(self, buffer: Any, offset: int, values: tuple[Any, ...], views: tuple[np.ndarray, ...]) -> None:
        """Write reward, terminated and truncated of :meth:`reply_values` (``views``: :meth:`lane_views`)."""
        if self.lanes is None:
            ONE_LANE.pack_into(buffer, offset, values[1], values[2], values[3])
        else:
            for view, value in zip(views, values[1:], strict=True):
                np.copyto(view, value)

    def payload(
        self,
        observation: np.ndarray,
        buffer: Any,
        offset: int,
        views: tuple[np.ndarray, ...],
        decode: Callable[[Tensor], Any] | None,
    ) -> list[Any]:
        """The step reply payload a record holds, as an encoded reply would decode.

        ``observation`` is an aligned array the caller may keep; the header area is read
        from ``buffer`` at ``offset`` (``views``: :meth:`lane_views` of it) and copied.
        """
        wrap = Tensor._wrap
        if decode is None:
            decode = _keep
        if self.lanes is None:
            reward, terminated, truncated = ONE_LANE.unpack_from(buffer, offset)
            return [decode(wrap(observation)), reward, terminated, truncated, {}]
        values = [decode(wrap(observation))]
        for view in views:
            array = aligned_empty(view.shape, view.dtype)
            np.copyto(array, view)
            values.append(decode(wrap(array)))
        values.append({})
        return values


def _keep(tensor: Tensor) -> Tensor:
    return tensor


# -- records as ZeroMQ frames --------------------------------------------------------------
RECORD_TAG = 0xC1  # "never used" in msgpack: no encoded message starts with it
_SCALAR, _ARRAY, _REPLY = 1, 2, 3
# tag, kind, six bytes of padding, request id: the observation that follows is 8-aligned.
_FRAME_HEAD = struct.Struct("<BB6xQ")
# Observations up to this size travel in record frames (ZeroMQ copies such frames anyway);
# larger ones keep the zero-copy tensor frames of encoded messages.
FRAME_MAX_OBSERVATION_BYTES = 1 << 16


def is_record_frame(frame: Any) -> bool:
    """Whether ``frame`` (frame 0 of a message) is a step record rather than an encoded header."""
    return len(frame) >= _FRAME_HEAD.size and frame[0] == RECORD_TAG


class RecordFrames:
    """Step records as single ZeroMQ frames, for one contract and one side of one session.

    The request frame holds the action's bytes; the reply frame holds reward, terminated and
    truncated, then the observation's bytes. Buffers are reused, so one instance serves one
    thread. Build with :meth:`for_contract`, which returns None when steps need encoding.
    """

    def __init__(self, record: StepRecord) -> None:
        self.record = record
        head = _FRAME_HEAD.size
        self._request = bytearray(head + record.action_bytes)
        self._action = np.ndarray(record.action_shape, record.action_dtype, self._request, head)
        self._observation_offset = head + -(-record.header_bytes // 8) * 8
        self._reply = bytearray(self._observation_offset + record.observation_bytes)
        self._reply_views = record.lane_views(self._reply, head)
        self._observation = np.ndarray(
            record.observation_shape, record.observation_dtype, self._reply, self._observation_offset
        )

    @property
    def request_bytes(self) -> int:
        """Size of a request frame."""
        return len(self._request)

    @property
    def reply_bytes(self) -> int:
        """Size of a reply frame."""
        return len(self._reply)

    @classmethod
    def for_contract(cls, contract: EnvContract) -> RecordFrames | None:
        """Record frames for ``contract``, or None (spaces that need encoding, large observations)."""
        record = StepRecord.for_contract(contract)
        if record is None or record.observation_bytes > FRAME_MAX_OBSERVATION_BYTES:
            return None
        return cls(record)

    # -- client ------------------------------------------------------------------------
    def request(self, action: Any, scalar: bool, request_id: int) -> bytes:
        """The request frame of a step (``action``, ``scalar``: :meth:`StepRecord.encode_action`)."""
        self._action[...] = action
        _FRAME_HEAD.pack_into(self._request, 0, RECORD_TAG, _SCALAR if scalar else _ARRAY, request_id)
        return bytes(self._request)

    def read_reply(self, frame: Any, decode: Callable[[Tensor], Any] | None) -> tuple[Header, list[Any]]:
        """The header and step payload of a reply frame.

        Raises:
            ProtocolError: for a frame of the wrong size or kind.
        """
        request_id = self._head(frame, len(self._reply), (_REPLY,))[1]
        record = self.record
        observation = aligned_empty(record.observation_shape, record.observation_dtype)
        observation.reshape(-1).view(np.uint8)[:] = np.frombuffer(
            frame, np.uint8, record.observation_bytes, self._observation_offset
        )
        views = () if record.lanes is None else record.lane_views(frame, _FRAME_HEAD.size)
        return Header(p.OK, request_id, [], b""), record.payload(observation, frame, _FRAME_HEAD.size, views, decode)

    # -- server ------------------------------------------------------------------------
    def read_request(self, frame: Any) -> tuple[int, Any]:
        """The request id and action of a request frame: a Python number for a scalar, else a copy.

        Raises:
            ProtocolError: for a frame of the wrong size or kind.
        """
        kind, request_id = self._head(frame, len(self._request), (_SCALAR, _ARRAY))
        record = self.record
        action = np.frombuffer(frame, record.action_dtype, math.prod(record.action_shape), _FRAME_HEAD.size)
        if kind == _SCALAR:
            return request_id, action[0].item()
        return request_id, action.reshape(record.action_shape).copy()

    def reply(self, request_id: int, payload: Any) -> bytes | None:
        """The reply frame of a step's ``payload``, or None when it must be encoded."""
        record = self.record
        values = record.reply_values(payload)
        if values is None:
            return None
        np.copyto(self._observation, values[0])
        record.write_header(self._reply, _FRAME_HEAD.size, values, self._reply_views)
        _FRAME_HEAD.pack_into(self._reply, 0, RECORD_TAG, _REPLY, request_id)
        return bytes(self._reply)

    @staticmethod
    def _head(frame: Any, size: int, kinds: tuple[int, ...]) -> tuple[int, int]:
        """Kind and request id of a record frame (at least a head long: see is_record_frame)."""
        _, kind, request_id = _FRAME_HEAD.unpack_from(frame)
        error = None
        if len(frame) != size:
            error = ProtocolError(f"step record frame of {len(frame)} bytes; this session's records take {size}")
        elif kind not in kinds:
            error = ProtocolError(f"step record frame of kind {kind}; expected one of {list(kinds)}")
        if error is not None:
            error.request_id = request_id  # type: ignore[attr-defined]  # the refusal reaches the caller
            raise error
        return kind, request_id


def record_header(frame: Any) -> Header:
    """A record frame's request (``is_record_frame(frame)``) as a header: a step, with its id."""
    return Header(p.STEP, _FRAME_HEAD.unpack_from(frame)[2], [], b"")


__all__ = [
    "FRAME_MAX_OBSERVATION_BYTES",
    "ONE_LANE",
    "RECORD_TAG",
    "RecordFrames",
    "StepRecord",
    "is_record_frame",
    "record_header",
]
