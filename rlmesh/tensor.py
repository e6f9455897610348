"""A CPU tensor with 64-byte-aligned storage that it owns, and a DLPack producer."""

from __future__ import annotations

import math
import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

ALIGNMENT = 64
# Buffers up to _SMALL_BYTES are carved from per-thread 1 MiB slabs: one aligned allocation
# serves thousands of small observations, which keeps the per-message cost at ~1 us.
_SLAB_BYTES = 1 << 20
_SMALL_BYTES = 1 << 14
_slabs = threading.local()
# Large buffers are recycled once nothing references them any more (no array view, no
# DLPack-imported JAX array): a fresh multi-MiB allocation page-faults on every 4 KiB page
# the receive writes, which costs more than the copy itself. The pool holds at most
# _POOL_PER_SIZE buffers of one size and _pool_limit bytes in all; a buffer it does not
# hold is freed as soon as its last user lets go.
_POOL_PER_SIZE = 4
DEFAULT_BUFFER_POOL_BYTES = 1 << 26
_pool_limit = DEFAULT_BUFFER_POOL_BYTES
_pool_bytes = 0
_pool: dict[int, list[tuple[np.ndarray, int]]] = {}  # by size, least recently used first
_pool_lock = threading.Lock()

# The 12 dtypes that cross the wire, by name, with their one-byte wire codes.
WIRE_DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
)
DTYPE_CODES: dict[str, int] = {name: code for code, name in enumerate(WIRE_DTYPES)}
_NUMPY_DTYPES: tuple[np.dtype, ...] = tuple(np.dtype(name) for name in WIRE_DTYPES)
_SUPPORTED = frozenset(_NUMPY_DTYPES)


def wire_dtype(dtype: Any) -> np.dtype:
    """Return the NumPy dtype for ``dtype`` if it can cross the wire.

    Raises:
        ValueError: for bfloat16, complex, object, string and other dtypes, naming the dtype.
    """
    try:
        resolved = np.dtype(dtype)
    except TypeError as error:
        raise ValueError(f"dtype {dtype!r} is not a wire dtype; use one of {', '.join(WIRE_DTYPES)}") from error
    if resolved.byteorder == ">":
        resolved = resolved.newbyteorder("=")
    if resolved not in _SUPPORTED:
        hint = (
            "cast it to float32 first (e.g. x.astype('float32'))"
            if resolved.name == "bfloat16"
            else f"cast it to one of {', '.join(WIRE_DTYPES)}"
        )
        raise ValueError(f"dtype {resolved.name!r} cannot cross the wire: {hint}")
    return resolved


def dtype_from_code(code: int) -> np.dtype:
    """Return the NumPy dtype for a one-byte wire code."""
    return _NUMPY_DTYPES[code]


def _aligned_raw(nbytes: int) -> tuple[np.ndarray, int]:
    raw = np.empty(nbytes + ALIGNMENT, dtype=np.uint8)
    return raw, (-raw.ctypes.data) % ALIGNMENT


def _is_free(entry: tuple[np.ndarray, int]) -> bool:
    # Referenced only by its pool entry and getrefcount's argument.
    return sys.getrefcount(entry[0]) <= 2


def _recycled_raw(nbytes: int) -> tuple[np.ndarray, int]:
    global _pool_bytes
    if nbytes > _pool_limit:
        return _aligned_raw(nbytes)
    with _pool_lock:
        entries = _pool.pop(nbytes, None)
        if entries:
            _pool[nbytes] = entries  # most recently used last
            for entry in entries:
                if _is_free(entry):
                    return entry
        entry = _aligned_raw(nbytes)
        size = entry[0].nbytes
        if (not entries or len(entries) < _POOL_PER_SIZE) and _make_room(size):
            _pool.setdefault(nbytes, []).append(entry)
            _pool_bytes += size
        return entry


def _make_room(size: int) -> bool:
    """Drop free pooled buffers, least recently used sizes first, until ``size`` fits."""
    global _pool_bytes
    for key in list(_pool):
        if _pool_bytes + size <= _pool_limit:
            break
        kept = []
        for entry in _pool[key]:
            if _pool_bytes + size > _pool_limit and _is_free(entry):
                _pool_bytes -= entry[0].nbytes
            else:
                kept.append(entry)
        if kept:
            _pool[key] = kept
        else:
            del _pool[key]
    return _pool_bytes + size <= _pool_limit


def set_buffer_pool_limit(nbytes: int) -> int:
    """Cap the bytes this process keeps in recycled receive buffers; returns the old cap.

    Free buffers over the new cap are released at once; 0 turns recycling off.

    Raises:
        ValueError: for a negative ``nbytes``.
    """
    global _pool_limit
    if not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"buffer pool limit must be a non-negative int of bytes, got {nbytes!r}")
    with _pool_lock:
        old, _pool_limit = _pool_limit, nbytes
        _make_room(0)
    return old


def buffer_pool_bytes() -> int:
    """Bytes currently held by the receive buffer pool (in use or free)."""
    return _pool_bytes


def aligned_empty(shape: Sequence[int], dtype: Any) -> np.ndarray:
    """Allocate a writable C-contiguous array whose data pointer is 64-byte aligned.

    The array owns (through its base) memory no other array returned here shares.
    """
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _SMALL_BYTES:
        raw, offset = _recycled_raw(nbytes)
        return np.ndarray(shape, dtype, raw, offset)
    try:
        state = _slabs.state  # [slab, next free offset] of this thread
    except AttributeError:
        state = _slabs.state = [None, _SLAB_BYTES]
    size = (nbytes + ALIGNMENT - 1) & -ALIGNMENT or ALIGNMENT
    offset = state[1]
    if offset + size > _SLAB_BYTES:
        raw, start = _aligned_raw(_SLAB_BYTES)
        state[0], offset = raw[start : start + _SLAB_BYTES], 0
    state[1] = offset + size
    # Positional arguments: NumPy's keyword parsing costs more than the allocation here.
    return np.ndarray(shape, dtype, state[0], offset)


def is_aligned(array: np.ndarray) -> bool:
    """Whether ``array``'s data pointer is 64-byte aligned."""
    return array.ctypes.data % ALIGNMENT == 0


class Tensor:
    """A CPU tensor of one of the 12 wire dtypes, stored in 64-byte-aligned memory it owns.

    Tensors are what tensor leaves decode to in the plain ``rlmesh`` backend. They export
    DLPack, so ``np.from_dlpack(t)`` and ``jax.numpy.from_dlpack(t)`` share their memory.

    Example:
        >>> t = Tensor.from_numpy(np.arange(4, dtype=np.float32))
        >>> t.shape, t.dtype
        ((4,), 'float32')
    """

    __slots__ = ("__weakref__", "_array")

    def __init__(self, array: np.ndarray, *, _owned: bool = False) -> None:
        """Wrap ``array``; copy it into aligned storage unless it is already owned and aligned.

        Prefer the constructors :meth:`from_numpy`, :meth:`from_bytes`, :meth:`from_dlpack`
        and :meth:`empty`.
        """
        if not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor wraps a numpy.ndarray, got {type(array).__name__}")
        dtype = wire_dtype(array.dtype)
        if not (_owned and is_aligned(array) and array.flags.c_contiguous and array.flags.writeable):
            storage = aligned_empty(array.shape, dtype)
            np.copyto(storage, array, casting="no" if array.dtype == dtype else "unsafe")
            array = storage
        self._array = array

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def _wrap(cls, array: np.ndarray) -> Tensor:
        """Wrap an array from :func:`aligned_empty` without checks (the receive hot path)."""
        tensor = object.__new__(cls)
        tensor._array = array
        return tensor

    @classmethod
    def empty(cls, shape: Sequence[int], dtype: Any) -> Tensor:
        """An uninitialised tensor of ``shape`` and ``dtype`` (a wire dtype)."""
        return cls(aligned_empty(shape, wire_dtype(dtype)), _owned=True)

    @classmethod
    def from_numpy(cls, array: Any) -> Tensor:
        """Copy an array-like into a fresh aligned tensor."""
        return cls(np.asarray(array))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, shape: Sequence[int], dtype: Any) -> Tensor:
        """Copy raw bytes (C order) of ``shape`` and ``dtype`` into a fresh aligned tensor.

        Raises:
            ValueError: when the byte count does not match ``shape`` and ``dtype``.
        """
        resolved = wire_dtype(dtype)
        shape = tuple(int(d) for d in shape)
        expected = int(np.prod(shape, dtype=np.int64)) * resolved.itemsize
        view = memoryview(data).cast("B")
        if view.nbytes != expected:
            raise ValueError(
                f"{view.nbytes} bytes cannot fill a tensor of shape {shape} and dtype "
                f"{resolved.name} ({expected} bytes expected)"
            )
        tensor = cls.empty(shape, resolved)
        tensor._array.reshape(-1).view(np.uint8)[:] = np.frombuffer(view, dtype=np.uint8)
        return tensor

    @classmethod
    def from_dlpack(cls, obj: Any) -> Tensor:
        """Copy any DLPack producer (NumPy, JAX, torch CPU tensors) into a fresh tensor."""
        return cls(np.from_dlpack(obj))

    # -- properties ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return self._array.shape

    @property
    def dtype(self) -> str:
        """The wire dtype name, e.g. ``"float32"``."""
        return self._array.dtype.name

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return self._array.ndim

    @property
    def size(self) -> int:
        """Number of elements."""
        return self._array.size

    @property
    def nbytes(self) -> int:
        """Number of bytes of storage."""
        return self._array.nbytes

    @property
    def data_ptr(self) -> int:
        """Address of the first element (64-byte aligned)."""
        return self._array.ctypes.data

    # -- views --------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """A NumPy view sharing this tensor's memory (no copy)."""
        return self._array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        if dtype is not None and np.dtype(dtype) != self._array.dtype:
            return self._array.astype(dtype)
        return self._array.copy() if copy else self._array

    def __dlpack__(self, **kwargs: Any) -> Any:
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self._array.__dlpack_device__()

    def tolist(self) -> Any:
        """The elements as nested Python lists."""
        return self._array.tolist()

    def __len__(self) -> int:
        if not self._array.ndim:
            raise TypeError("len() of a 0-d tensor")
        return len(self._array)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return (
            self.shape == other.shape and self.dtype == other.dtype and bool(np.array_equal(self._array, other._array))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Tensor(shape={self.shape}, dtype={self.dtype})"
