"""A session's shared-memory channel: requests and replies written in place, plus doorbells.

Messages keep the wire codec's form (a msgpack header, then raw tensors) but the tensors are
written at 64-byte-aligned offsets inside the region instead of into socket frames. The
client writes a request, bumps the request sequence number and rings; the server reads it
(copying the tensors out), writes the reply's header into the header area and its tensors into
the reply slot the client chose, bumps the reply sequence number and rings.

Reply slots make zero-copy decode safe: the client picks a slot that no decoded array still
views (a reference count, as the aligned-buffer pool does), so the server never overwrites
memory a caller (or an immutable JAX array) holds. Slot 0 is scratch: when every other slot
is held, or a tensor is small, the client copies the tensor out of the region.

A message that does not fit goes over ZeroMQ instead, and the peer still listens there.
"""

from __future__ import annotations

import ctypes
import math
import os
import stat
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rlmesh import protocol as p
from rlmesh.codec import DEFAULT_LIMITS, Header, Limits, decode_body, parse_header
from rlmesh.errors import ProtocolError
from rlmesh.record import StepRecord
from rlmesh.shm.doorbell import Doorbell, Spinner, fence
from rlmesh.shm.region import (
    CLIENT_AWAKE,
    MESSAGE,
    RECORD_ARRAY,
    RECORD_SCALAR,
    REPLY_HEADER_BYTES,
    REPLY_KIND,
    REPLY_SEQ,
    REPLY_SLOT,
    REQUEST_HEADER_BYTES,
    REQUEST_ID,
    REQUEST_KIND,
    REQUEST_SEQ,
    REQUEST_SLOT,
    SERVER_AWAKE,
    SERVER_CLOSED,
    Layout,
    Region,
    align,
)
from rlmesh.specs import SpaceSpec
from rlmesh.tensor import Tensor, aligned_empty

# Reply tensors up to this size are copied out (cheap) rather than pinning a slot.
COPY_BELOW_BYTES = 1 << 14
SCRATCH_SLOT = 0
_REQUEST_BELL = ".c2s"
_REPLY_BELL = ".s2c"


def space_bytes(spec: SpaceSpec) -> int:
    """Tensor bytes one value of ``spec`` takes on the wire (aligned), 0 for text."""
    spaces = getattr(spec, "spaces", None)  # Dict and Tuple specs
    if spaces is not None:
        return sum(space_bytes(s) for s in (spaces.values() if isinstance(spaces, Mapping) else spaces))
    if spec.dtype is None or not spec.shape:
        return 0
    return align(math.prod(spec.shape) * np.dtype(spec.dtype).itemsize)


def _write_tensors(memory: np.ndarray, start: int, end: int, arrays: Sequence[np.ndarray]) -> bool:
    """Copy ``arrays`` into ``memory[start:end]`` at aligned offsets; False when they do not fit."""
    offset = start
    for array in arrays:
        offset = align(offset)
        stop = offset + array.nbytes
        if stop > end:
            return False
        if array.nbytes:
            memory[offset:stop] = array.reshape(-1).view(np.uint8)
        offset = stop
    return True


def _fits(start: int, end: int, arrays: Sequence[np.ndarray]) -> bool:
    offset = start
    for array in arrays:
        offset = align(offset) + array.nbytes
    return offset <= end


def _read_tensors(memory: np.ndarray, start: int, end: int, header: Header, view_from: Any) -> list[Tensor]:
    """Tensors announced by ``header`` at aligned offsets in ``memory[start:end]``.

    Large tensors become views of ``view_from`` (a slot) when given; the rest are copied.
    """
    tensors = []
    offset = start
    for shape, dtype in header.shapes:
        offset = align(offset)
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > end:
            raise ProtocolError(f"shared-memory message overruns its area ({offset + nbytes} > {end} bytes)")
        if view_from is not None and nbytes > COPY_BELOW_BYTES:
            array = np.ndarray(shape, dtype, buffer=view_from, offset=offset - start)
        else:
            array = aligned_empty(shape, dtype)
            if nbytes:
                array.reshape(-1).view(np.uint8)[:] = memory[offset : offset + nbytes]
        tensors.append(Tensor._wrap(array))
        offset += nbytes
    return tensors


class _Channel:
    """State both ends share: the region, its byte array, and two doorbells."""

    def __init__(self, region: Region, request_bell: Doorbell, reply_bell: Doorbell) -> None:
        self.region = region
        self.layout = region.layout
        self.words = region.words
        self.view = region.view
        self.memory = np.frombuffer(region.mmap, np.uint8)
        self.request_bell = request_bell
        self.reply_bell = reply_bell
        self.closed = False
        self.record: StepRecord | None = None

    def use_records(self, record: StepRecord | None) -> None:
        """Step through fixed-layout records of ``record`` (None: encoded messages only)."""
        layout = self.layout
        if record is None or not record.fits(layout.request_bytes, layout.header_bytes, layout.slot_bytes):
            self.record = None
            return
        self.record = record
        buffer = self.region.mmap
        self.action_view = np.ndarray(record.action_shape, record.action_dtype, buffer, layout.request_offset)
        self.lane_views = record.lane_views(buffer, layout.header_offset)
        # The observation's place in each reply slot (the server writes there, the client copies from there).
        shape, dtype = record.observation_shape, record.observation_dtype
        self._observation_views = [
            np.ndarray(shape, dtype, buffer, layout.slot_offset(k)) for k in range(layout.slot_count)
        ]

    def _drop_record_views(self) -> None:
        if self.record is not None:
            self.record = None
            del self.action_view, self.lane_views
            del self._observation_views

    def unlink(self) -> None:
        """Remove the region file and doorbell paths (mappings and fds stay valid)."""
        self.region.unlink()
        self.request_bell.unlink()
        self.reply_bell.unlink()

    def close(self) -> None:
        """Unlink, close the doorbells and unmap (once no decoded array views the region). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.unlink()
        self.request_bell.close()
        self.reply_bell.close()
        self._drop_record_views()
        del self.memory, self.view, self.words
        self.region.close()


class ServerChannel(_Channel):
    """The server's end: reads requests, writes replies.

    Create with :meth:`offer`; send :meth:`offer_payload` in the handshake reply.
    """

    def __init__(self, region: Region, request_bell: Doorbell, reply_bell: Doorbell) -> None:
        super().__init__(region, request_bell, reply_bell)
        self.handled = 0
        self._request_slot = SCRATCH_SLOT

    @classmethod
    def offer(cls, socket_path: str, layout: Layout) -> ServerChannel:
        """Create a region and its doorbells beside ``socket_path``.

        Raises:
            OSError: when the files cannot be made (the session then runs over ZeroMQ).
        """
        region = Region.create(socket_path, layout)
        bells: list[Doorbell] = []
        try:
            for suffix in (_REQUEST_BELL, _REPLY_BELL):
                bells.append(Doorbell(region.path + suffix, create=True))
        except BaseException:
            for bell in bells:
                bell.unlink()
                bell.close()
            region.unlink()
            region.close()
            raise
        return cls(region, *bells)

    def offer_payload(self) -> dict[str, Any]:
        """What the client needs to attach: the file name (not the path) and the geometry."""
        return {"name": os.path.basename(self.region.path), "layout": self.layout.to_list()}

    @property
    def fd(self) -> int:
        """A file descriptor readable when the client rang."""
        return self.request_bell.fd

    def pending(self) -> bool:
        """Whether an unread request is in the region."""
        return self.words[REQUEST_SEQ] > self.handled

    def wait(self, spinner: Spinner) -> bool:
        """Spin for a request within ``spinner``'s budget; whether one is pending."""
        return spinner.spin(self.words, REQUEST_SEQ, self.handled + 1)

    def holds_step(self) -> bool:
        """Whether the pending request is a step record (read it with :meth:`receive_step`)."""
        return self.words[REQUEST_KIND] != MESSAGE

    def receive_step(self) -> tuple[int, Any]:
        """Read the pending step record: its request id and the action.

        A scalar action is a Python number and an array action a fresh copy, as an encoded
        request would have decoded.

        Raises:
            ProtocolError: this channel takes no records (it still counts as read: reply to it).
        """
        words = self.words
        self.handled = words[REQUEST_SEQ]
        slot = words[REQUEST_SLOT]
        self._request_slot = slot if slot < self.layout.slot_count else SCRATCH_SLOT
        if self.record is None:
            raise ProtocolError("a step record arrived, but this session encodes every step")
        view = self.action_view
        return words[REQUEST_ID], view.item() if words[REQUEST_KIND] == RECORD_SCALAR else view.copy()

    def reply_step(self, payload: Any) -> bool:
        """Write a step reply as a record and ring; False when it must be encoded instead."""
        record = self.record
        values = None if record is None else record.reply_values(payload)
        if values is None:
            return False
        np.copyto(self._observation_views[self._request_slot], values[0])
        record.write_header(self.view, self.layout.header_offset, values, self.lane_views)
        words = self.words
        words[REPLY_KIND] = RECORD_ARRAY
        words[REPLY_SLOT] = self._request_slot
        words[REPLY_SEQ] = self.handled
        self._wake_client()
        return True

    def _wake_client(self) -> None:
        fence()
        if not self.words[CLIENT_AWAKE]:
            self.reply_bell.ring()

    def set_awake(self) -> None:
        """Tell the client this side looks for requests itself: they need no wake-up."""
        self.words[SERVER_AWAKE] = 1

    def doze(self) -> bool:
        """Prepare to sleep until the client rings; whether a request came meanwhile (then stay awake)."""
        words = self.words
        words[SERVER_AWAKE] = 0
        fence()
        self.request_bell.drain()
        if words[REQUEST_SEQ] > self.handled:
            words[SERVER_AWAKE] = 1
            return True
        return False

    def close(self) -> None:
        """Tell the client this end is closed (a request it writes now is never read), then close."""
        if not self.closed:
            self.words[SERVER_CLOSED] = 1
            self.reply_bell.ring()
        super().close()

    def receive(self, limits: Limits = DEFAULT_LIMITS) -> tuple[Header, Any]:
        """Read the pending request, copying its tensors out.

        Raises:
            ProtocolError: for a malformed request (it still counts as read: reply to it).
        """
        words = self.words
        self.handled = words[REQUEST_SEQ]
        header_bytes = words[REQUEST_HEADER_BYTES]
        slot = words[REQUEST_SLOT]
        self._request_slot = slot if slot < self.layout.slot_count else SCRATCH_SLOT
        start = self.layout.request_offset
        end = start + self.layout.request_bytes
        if header_bytes > self.layout.request_bytes or header_bytes > limits.max_message_bytes:
            raise ProtocolError(f"shared-memory request header of {header_bytes} bytes overruns its area")
        header = parse_header(bytes(self.view[start : start + header_bytes]), limits)
        tensors = _read_tensors(self.memory, start + header_bytes, end, header, None)
        return header, decode_body(header.body, tensors, Tensor.numpy, limits)

    def reply(self, frames: Sequence[Any]) -> bool:
        """Write an encoded reply in place and ring; False when it must go over ZeroMQ instead.

        Either way the request area is free again afterwards, which the client learns from
        the reply sequence number (a zero header length means "look on ZeroMQ").
        """
        header, arrays = frames[0], frames[1:]
        layout, words = self.layout, self.words
        start = layout.slot_offset(self._request_slot)
        fits = len(header) <= layout.header_bytes and _write_tensors(
            self.memory, start, start + layout.slot_bytes, arrays
        )
        if fits:
            offset = layout.header_offset
            self.view[offset : offset + len(header)] = header
        words[REPLY_KIND] = MESSAGE
        words[REPLY_HEADER_BYTES] = len(header) if fits else 0
        words[REPLY_SLOT] = self._request_slot
        words[REPLY_SEQ] = self.handled
        self._wake_client()
        return fits


class ClientChannel(_Channel):
    """The client's end: writes requests, reads replies (zero-copy from free slots)."""

    def __init__(self, region: Region, request_bell: Doorbell, reply_bell: Doorbell) -> None:
        super().__init__(region, request_bell, reply_bell)
        layout = self.layout
        self.sent = 0
        self.server_was_awake = False  # when the last request was written
        # One ctypes buffer per slot: NumPy keeps such an exporter (not the mapping) as the
        # base of every array viewing it, so its reference count says whether the slot is free.
        slot_type = ctypes.c_char * layout.slot_bytes
        self.slots = [slot_type.from_buffer(region.mmap, layout.slot_offset(k)) for k in range(layout.slot_count)]

    @classmethod
    def attach(cls, socket_path: str, offer: Any) -> ClientChannel:
        """Map the region a server offered for the endpoint at ``socket_path``; unlink its files.

        Raises:
            OSError, ValueError: when the offer is malformed or the files cannot be mapped
                (the session then runs over ZeroMQ).
        """
        if not isinstance(offer, dict):
            raise ValueError(f"malformed shared-memory offer {offer!r:.100}")
        name = offer.get("name")
        if not isinstance(name, str) or not name.startswith(os.path.basename(socket_path) + ".shm-") or "/" in name:
            raise ValueError(f"shared-memory offer names an unexpected file {name!r:.100}")
        path = os.path.join(os.path.dirname(socket_path), name)
        paths = [path, path + _REQUEST_BELL, path + _REPLY_BELL]
        opened: list[Any] = []
        try:
            opened.append(Region.open(path, Layout.from_list(offer.get("layout"))))
            for bell_path in paths[1:]:
                if not _is_fifo(bell_path):
                    raise ValueError(f"{bell_path} is not a FIFO")
                opened.append(Doorbell(bell_path))
        except BaseException:
            for resource in opened:
                resource.close()
            for leftover in paths:  # a failed attach leaves nothing behind either
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
            raise
        channel = cls(*opened)
        channel.unlink()
        return channel

    @property
    def fd(self) -> int:
        """A file descriptor readable when the server rang."""
        return self.reply_bell.fd

    def idle(self) -> bool:
        """Whether the server has answered every request written (the request area is free)."""
        return self.words[REPLY_SEQ] >= self.sent

    def send(self, frames: Sequence[Any]) -> bool:
        """Write an encoded request in place and ring; False when it must go over ZeroMQ."""
        if not self.idle():
            return False  # an abandoned request is still being served
        header, arrays = frames[0], frames[1:]
        layout = self.layout
        start = layout.request_offset
        end = start + layout.request_bytes
        if len(header) > layout.request_bytes or not _fits(start + len(header), end, arrays):
            return False
        self.view[start : start + len(header)] = header
        _write_tensors(self.memory, start + len(header), end, arrays)
        words = self.words
        words[REQUEST_KIND] = MESSAGE
        words[REQUEST_HEADER_BYTES] = len(header)
        words[REQUEST_SLOT] = self._free_slot()
        self._publish()
        return True

    def _publish(self) -> None:
        """Publish the request written; wake the server if it sleeps."""
        words = self.words
        words[CLIENT_AWAKE] = 1  # this side looks for the reply itself until it dozes
        self.sent += 1
        words[REQUEST_SEQ] = self.sent
        fence()
        self.server_was_awake = bool(words[SERVER_AWAKE])
        if not self.server_was_awake:
            self.request_bell.ring()

    def doze(self) -> None:
        """Prepare to sleep until the server rings (then check :meth:`replied` before polling)."""
        self.words[CLIENT_AWAKE] = 0
        fence()
        self.reply_bell.drain()

    def send_step(self, action: Any, scalar: bool, request_id: int) -> bool:
        """Write a step record (``action`` from :meth:`StepRecord.encode_action`) and ring.

        ``scalar`` says the action was a Python or NumPy scalar (the server gets a Python
        number, as from an encoded request). False when the request area is still busy.
        """
        record = self.record
        if record is None or not self.idle():
            return False
        self.action_view[...] = action
        words = self.words
        words[REQUEST_KIND] = RECORD_SCALAR if scalar else RECORD_ARRAY
        words[REQUEST_ID] = request_id
        words[REQUEST_SLOT] = self._free_slot() if record.observation_bytes > COPY_BELOW_BYTES else SCRATCH_SLOT
        self._publish()
        return True

    def _receive_step(self, decode_leaf: Callable[[Tensor], Any] | None) -> tuple[Header, Any]:
        record = self.record
        slot = self.words[REPLY_SLOT]
        if record is None or slot >= self.layout.slot_count:
            raise ProtocolError(f"malformed shared-memory step record (slot {slot})")
        shape, dtype = record.observation_shape, record.observation_dtype
        if slot != SCRATCH_SLOT and record.observation_bytes > COPY_BELOW_BYTES:
            observation = np.ndarray(shape, dtype, buffer=self.slots[slot])
        else:
            observation = aligned_empty(shape, dtype)
            np.copyto(observation, self._observation_views[slot])
        return _RECORD, record.payload(observation, self.view, self.layout.header_offset, self.lane_views, decode_leaf)

    def _free_slot(self) -> int:
        for slot in range(1, len(self.slots)):
            # Referenced only by self.slots and getrefcount's argument: nothing views it.
            if sys.getrefcount(self.slots[slot]) <= 2:
                return slot
        return SCRATCH_SLOT

    def replied(self) -> bool:
        """Whether the reply to the last request written has arrived."""
        return self.words[REPLY_SEQ] >= self.sent

    def server_gone(self, check_process: bool = False) -> bool:
        """Whether the server closed its end; with ``check_process``, also whether it died.

        A request written but not answered by then was never read: resend it elsewhere.
        """
        return bool(self.words[SERVER_CLOSED]) or (check_process and not self.region.creator_alive())

    def wait(self, spinner: Spinner) -> bool:
        """Spin for the reply within ``spinner``'s budget; whether it arrived."""
        return spinner.spin(self.words, REPLY_SEQ, self.sent)

    def receive(
        self, decode_leaf: Callable[[Tensor], Any] | None, limits: Limits = DEFAULT_LIMITS
    ) -> tuple[Header, Any] | None:
        """Decode the reply that arrived; None when the server sent it over ZeroMQ instead.

        Raises:
            ProtocolError: for a malformed reply.
        """
        words, layout = self.words, self.layout
        if words[REPLY_KIND] != MESSAGE:
            return self._receive_step(decode_leaf)
        header_bytes = words[REPLY_HEADER_BYTES]
        if header_bytes == 0:
            return None
        slot = words[REPLY_SLOT]
        if header_bytes > min(layout.header_bytes, limits.max_message_bytes) or slot >= layout.slot_count:
            raise ProtocolError(f"malformed shared-memory reply (header {header_bytes} bytes, slot {slot})")
        offset = layout.header_offset
        header = parse_header(bytes(self.view[offset : offset + header_bytes]), limits)
        start = layout.slot_offset(slot)
        view_from = None if slot == SCRATCH_SLOT else self.slots[slot]
        tensors = _read_tensors(self.memory, start, start + layout.slot_bytes, header, view_from)
        return header, decode_body(header.body, tensors, decode_leaf, limits)

    def close(self) -> None:
        """Unmap once no decoded array views the region; see :meth:`_Channel.close`."""
        self.slots = []
        super().close()


# What a step record reads as: a successful reply (its request id is the one awaited).
_RECORD = Header(p.OK, 0, [], b"")


def _is_fifo(path: str) -> bool:
    try:
        return stat.S_ISFIFO(os.lstat(path).st_mode)
    except OSError:
        return False
