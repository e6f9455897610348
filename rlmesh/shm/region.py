"""A shared-memory region: a 0600 file next to a unix socket, mapped by server and client.

The file lives in the endpoint's directory (not ``/dev/shm``) so that a server inside a
container and a client on the host, which share only that bind-mounted directory, map the
same pages. Both ends unlink it as soon as both have it mapped, so a process killed later
leaves nothing behind; a server restarting on the same socket removes any region a killed
predecessor left before the client mapped it.

Layout (all offsets 64-byte aligned)::

    control page   magic, geometry, sequence numbers (one cache line each writer)
    request area   request header then its tensors (client writes, server reads)
    reply header   reply header (server writes)
    reply slots    ``slot_count`` areas for reply tensors; the client picks one per request
"""

from __future__ import annotations

import fcntl
import glob
import mmap
import os
import secrets
import struct
from dataclasses import dataclass

ALIGNMENT = 64
PAGE = mmap.PAGESIZE
MAGIC = b"RLMSHM01"
SUFFIX = ".shm-"

# Control page: word indices into a uint64 view. Each side writes its own cache line.
_GEOMETRY = struct.Struct("<8sQQQQ")  # magic, request, header, slot capacity, slot count
REQUEST_SEQ = 8  # client line (byte 64): sequence of the last request written
REQUEST_HEADER_BYTES = 9
REQUEST_SLOT = 10  # the reply slot the client wants this request's reply in
REQUEST_KIND = 11  # MESSAGE, or a step record (see rlmesh.record)
REQUEST_ID = 12  # the request id of a step record (a message carries its own)
CLIENT_AWAKE = 13  # 1 while the client will look for the reply without a wake-up
REPLY_SEQ = 16  # server line (byte 128): sequence of the last reply written
REPLY_HEADER_BYTES = 17
REPLY_SLOT = 18
SERVER_AWAKE = 19  # 1 while the server will look for requests without a wake-up
SERVER_CLOSED = 20  # 1 once the server closed its end: the session is over
REPLY_KIND = 21  # MESSAGE, or a step record

# Request and reply kinds.
MESSAGE = 0  # an encoded message: header then tensors
RECORD_ARRAY = 1  # a step record whose action arrived as an array
RECORD_SCALAR = 2  # a step record whose action arrived as a scalar (decoded as a Python number)
CONTROL_BYTES = PAGE
# Bounds a handshake offer must respect: a peer cannot make the other map or copy more.
MAX_AREA_BYTES = 1 << 31


def align(value: int, to: int = ALIGNMENT) -> int:
    """Round ``value`` up to a multiple of ``to`` (a power of two)."""
    return (value + to - 1) & -to


@dataclass(frozen=True)
class Layout:
    """Where each area of a region lies.

    Attributes:
        request_bytes: Capacity of the request area (header plus tensors).
        header_bytes: Capacity of the reply header area.
        slot_bytes: Capacity of each reply slot (reply tensors).
        slot_count: Number of reply slots; slot 0 is the scratch slot the client always copies from.
    """

    request_bytes: int
    header_bytes: int
    slot_bytes: int
    slot_count: int

    def __post_init__(self) -> None:
        for name in ("request_bytes", "header_bytes", "slot_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 < value <= MAX_AREA_BYTES or value % PAGE:
                raise ValueError(f"{name} must be a positive multiple of {PAGE} up to {MAX_AREA_BYTES}, got {value!r}")
        if not isinstance(self.slot_count, int) or not 1 <= self.slot_count <= 64:
            raise ValueError(f"slot_count must be an int in 1..64, got {self.slot_count!r}")

    @property
    def request_offset(self) -> int:
        """Offset of the request area."""
        return CONTROL_BYTES

    @property
    def header_offset(self) -> int:
        """Offset of the reply header area."""
        return self.request_offset + self.request_bytes

    def slot_offset(self, slot: int) -> int:
        """Offset of reply slot ``slot``."""
        return self.header_offset + self.header_bytes + slot * self.slot_bytes

    @property
    def size(self) -> int:
        """Total bytes of the region."""
        return self.slot_offset(self.slot_count)

    def to_list(self) -> list[int]:
        """The geometry as sent in the handshake."""
        return [self.request_bytes, self.header_bytes, self.slot_bytes, self.slot_count]

    @classmethod
    def from_list(cls, values: object) -> Layout:
        """Rebuild a layout from :meth:`to_list`'s output.

        Raises:
            ValueError: when ``values`` is not four valid sizes.
        """
        if not isinstance(values, list | tuple) or len(values) != 4:
            raise ValueError(f"region geometry must be 4 integers, got {values!r:.100}")
        return cls(*values)

    @classmethod
    def for_messages(cls, request_bytes: int, reply_bytes: int, slot_count: int = 3) -> Layout:
        """A layout whose areas hold requests and reply tensors of the given sizes, with headroom."""
        request = align(max(request_bytes * 2, 1 << 16), PAGE)
        slot = align(max(reply_bytes + reply_bytes // 4, 1 << 18), PAGE)
        return cls(request, 1 << 16, slot, slot_count)


class Region:
    """A mapped region file.

    Create one with :meth:`create` (server) or :meth:`open` (client). ``words`` is a uint64
    view of the control page; ``view`` a byte view of the whole region. The creator holds a
    shared ``flock`` on the file for as long as it keeps the region, so the other side can
    tell (:meth:`creator_alive`) whether it still exists, even if it was killed.
    """

    def __init__(self, path: str, layout: Layout, file: mmap.mmap, fd: int) -> None:
        self.path = path
        self.layout = layout
        self.fd = fd
        self.mmap = file
        self.view = memoryview(file)
        self.words = self.view[:CONTROL_BYTES].cast("Q")

    @classmethod
    def create(cls, socket_path: str, layout: Layout) -> Region:
        """Create a fresh region file (mode 0600) beside ``socket_path`` and map it.

        Raises:
            OSError: when the file cannot be created or mapped.
        """
        path = f"{socket_path}{SUFFIX}{secrets.token_hex(8)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, layout.size)
            file = mmap.mmap(fd, layout.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            _unlink(path)
            raise
        region = cls(path, layout, file, fd)
        _GEOMETRY.pack_into(region.view, 0, MAGIC, *layout.to_list())
        return region

    @classmethod
    def open(cls, path: str, layout: Layout) -> Region:
        """Map an existing region file created by :meth:`create` with the same layout.

        Raises:
            OSError: when the file cannot be opened or mapped.
            ValueError: when the file is not a region of ``layout``.
        """
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size != layout.size:
                raise ValueError(f"region {path} holds {size} bytes, expected {layout.size}")
            file = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        region = cls(path, layout, file, fd)
        magic, *geometry = _GEOMETRY.unpack_from(region.view, 0)
        if magic != MAGIC or geometry != layout.to_list():
            region.close()
            raise ValueError(f"{path} is not an rlmesh region of geometry {layout.to_list()}")
        return region

    def area(self, offset: int, size: int) -> memoryview:
        """A byte view of ``size`` bytes at ``offset``."""
        return self.view[offset : offset + size]

    def unlink(self) -> None:
        """Remove the file (the mapping stays valid). Idempotent."""
        _unlink(self.path)

    def creator_alive(self) -> bool:
        """Whether the side that created the region still holds it (its shared lock)."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        return False

    def close(self) -> None:
        """Unmap, unless decoded arrays still view the region (it is unmapped when they die)."""
        if self.fd >= 0:
            os.close(self.fd)  # releases the creator's lock
            self.fd = -1
        for resource in (self.words, self.view, self.mmap):
            try:
                # Builtins only: at interpreter exit (a client closed by __del__) module
                # globals such as ``mmap`` may already be None.
                resource.release() if type(resource) is memoryview else resource.close()
            except BufferError:
                pass  # arrays handed to the caller still point here; the mapping outlives them


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_stale(socket_path: str) -> list[str]:
    """Remove region files and doorbells left beside ``socket_path`` by a killed server.

    Only call this when binding ``socket_path`` (nobody else serves it then). Returns the
    removed paths.
    """
    removed = []
    for path in glob.glob(glob.escape(socket_path + SUFFIX) + "*"):
        try:
            os.unlink(path)
            removed.append(path)
        except OSError:
            pass
    return removed
