"""Wire codec: value trees to a msgpack header plus one raw frame per tensor, and back.

A message is a list of frames. Frame 0 is a msgpack array
``[kind, request_id, tensor_descriptors, body]`` where ``kind`` is the op of a request or
``"ok"``/``"error"`` for a reply, ``tensor_descriptors`` lists ``[dtype_code, shape]`` per
tensor, and ``body`` is the msgpack-encoded value tree with tensors replaced by extension
placeholders that hold their index. Frames 1.. are the tensors' raw C-order bytes.

Because the descriptors come before the body, a receiver can allocate 64-byte-aligned
buffers and receive each tensor frame straight into one, then decode the body with tensor
leaves bound to those buffers: no pickle, no tensor bytes inside msgpack, no copy after
the socket read.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from rlmesh.errors import ProtocolError
from rlmesh.tensor import DTYPE_CODES, WIRE_DTYPES, Tensor, aligned_empty, dtype_from_code, wire_dtype

TENSOR_EXT = 1
TUPLE_EXT = 2
_INDEX = struct.Struct("<I")
_CODE_BY_DTYPE = {np.dtype(name): code for name, code in DTYPE_CODES.items()}
_DTYPE_BY_CODE = [dtype_from_code(code) for code in range(len(WIRE_DTYPES))]

DEFAULT_MAX_MESSAGE_BYTES = 1 << 30
DEFAULT_MAX_TENSORS = 4096
DEFAULT_MAX_DEPTH = 64
_CONTAINERS = (list, tuple, dict)


@dataclass(frozen=True)
class Limits:
    """Bounds every received message must respect.

    Attributes:
        max_message_bytes: Header plus tensor bytes.
        max_tensors: Tensor frames per message.
        max_depth: Nesting depth of containers in a value tree.
    """

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_tensors: int = DEFAULT_MAX_TENSORS
    max_depth: int = DEFAULT_MAX_DEPTH


DEFAULT_LIMITS = Limits()


class _Encoder:
    """One message's worth of encoding state: the tensor descriptors and buffers."""

    __slots__ = ("buffers", "depth", "descriptors", "encode_leaf", "limits", "nbytes")

    def __init__(self, encode_leaf: Callable[[Any], Any] | None, limits: Limits) -> None:
        self.encode_leaf = encode_leaf
        self.limits = limits
        self.descriptors: list[list[Any]] = []
        self.buffers: list[Any] = []
        self.nbytes = 0
        self.depth = 0

    def pack(self, value: Any) -> bytes:
        try:
            return msgpack.packb(value, default=self.default, strict_types=True, use_bin_type=True)
        except OverflowError as error:
            raise _EncodeError(f"cannot encode value: {error}") from None

    def add_array(self, array: np.ndarray) -> msgpack.ExtType:
        code = _CODE_BY_DTYPE.get(array.dtype)
        if code is None:  # non-native byte order, or a dtype the wire refuses (raises)
            dtype = wire_dtype(array.dtype)
            array, code = np.ascontiguousarray(array, dtype=dtype), DTYPE_CODES[dtype.name]
        elif not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        if len(self.buffers) >= self.limits.max_tensors:
            raise _LimitError(f"a message may carry at most {self.limits.max_tensors} tensors")
        self.nbytes += array.nbytes
        if self.nbytes > self.limits.max_message_bytes:
            raise _LimitError(
                f"message exceeds max_message_bytes={self.limits.max_message_bytes} ({self.nbytes} bytes of tensors)"
            )
        index = len(self.buffers)
        self.descriptors.append([code, array.shape])
        self.buffers.append(array)
        return msgpack.ExtType(TENSOR_EXT, _INDEX.pack(index))

    def default(self, value: Any) -> Any:
        if isinstance(value, Tensor):
            return self.add_array(value.numpy())
        if isinstance(value, np.ndarray):
            if value.ndim == 0:
                return _scalar(value)
            return self.add_array(value)
        if isinstance(value, np.generic):
            return _scalar(value)
        if isinstance(value, tuple):
            self.depth += 1
            if self.depth > self.limits.max_depth:
                raise _EncodeError(f"value nests deeper than max_depth={self.limits.max_depth}")
            try:
                return msgpack.ExtType(TUPLE_EXT, self.pack(list(value)))
            finally:
                self.depth -= 1
        # Subclasses of the natively packed types (IntEnum, OrderedDict, ...).
        for base in (bool, int, float, str, bytes, dict, list):
            if isinstance(value, base):
                return base(value)
        if self.encode_leaf is not None:
            encoded = self.encode_leaf(value)
            if encoded is not NotImplemented:
                # msgpack calls ``default`` once per object: finish Tensors/arrays here.
                return self.default(encoded) if isinstance(encoded, Tensor | np.ndarray | np.generic) else encoded
        if hasattr(value, "__dlpack__"):
            return self.default(np.from_dlpack(value))
        if hasattr(value, "__array__") and not callable(value):
            return self.default(np.asarray(value))
        raise _EncodeError(
            f"cannot encode a value of type {type(value).__qualname__} ({value!r:.80}); values are "
            "None, bool, int, float, str, bytes, arrays, and lists, tuples and str-keyed dicts of them"
        )


class _EncodeError(TypeError):
    pass


class _LimitError(ProtocolError, TypeError):
    """A message to send breaks a limit (a TypeError too, like every encode failure)."""


def _scalar(value: np.ndarray | np.generic) -> Any:
    if value.dtype.kind not in "biuf":
        wire_dtype(value.dtype)  # raises ValueError naming the dtype
    return value.item()


def encode_message(
    kind: str,
    request_id: int,
    payload: Any,
    encode_leaf: Callable[[Any], Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Any]:
    """Encode one message as a list of frames (header first, then tensor buffers).

    Args:
        kind: The op of a request, or ``"ok"``/``"error"`` for a reply.
        request_id: Correlates a reply with its request.
        payload: A value tree.
        encode_leaf: Backend hook for array types the codec does not know (JAX arrays).
        limits: Size limits to enforce.

    Raises:
        TypeError: for values that cannot be encoded, naming the type.
        ValueError: for arrays of dtypes that cannot cross the wire.
    """
    encoder = _Encoder(encode_leaf, limits)
    body = encoder.pack(payload)
    header = msgpack.packb([kind, request_id, encoder.descriptors, body], use_bin_type=True)
    return [header, *encoder.buffers]


@dataclass(frozen=True)
class Header:
    """The parsed frame 0 of a message; ``body`` is still encoded."""

    kind: str
    request_id: int
    shapes: list[tuple[tuple[int, ...], np.dtype]]
    body: bytes


def parse_header(frame: bytes | memoryview, limits: Limits = DEFAULT_LIMITS) -> Header:
    """Parse and bound-check frame 0.

    Raises:
        ProtocolError: when the frame is not a well-formed header or breaks a limit.
    """
    if len(frame) > limits.max_message_bytes:
        raise ProtocolError(f"header of {len(frame)} bytes exceeds max_message_bytes")
    try:
        kind, request_id, descriptors, body = msgpack.unpackb(frame, raw=False, use_list=True)
    except Exception as error:
        raise ProtocolError(f"malformed message header: {error}") from None
    if not isinstance(kind, str) or not isinstance(request_id, int) or not isinstance(body, bytes):
        raise ProtocolError("malformed message header: expected [str, int, list, bytes]")
    try:
        shapes = _parse_descriptors(descriptors, len(frame), limits)
    except ProtocolError as error:
        error.request_id = request_id  # type: ignore[attr-defined]  # lets the refusal reach the caller
        raise
    return Header(kind, request_id, shapes, body)


def _parse_descriptors(descriptors: Any, header_bytes: int, limits: Limits) -> list[tuple[tuple[int, ...], np.dtype]]:
    if not isinstance(descriptors, list) or len(descriptors) > limits.max_tensors:
        raise ProtocolError(f"a message may carry at most {limits.max_tensors} tensors")
    shapes = []
    total = header_bytes
    for descriptor in descriptors:
        try:
            code, shape = descriptor
            dtype = _DTYPE_BY_CODE[code] if type(code) is int and code >= 0 else None
            if dtype is None:
                raise ValueError(f"unknown dtype code {code!r}")
            shape = tuple(shape)
            if len(shape) > 32 or not all(type(d) is int and d >= 0 for d in shape):
                raise ValueError(f"bad shape {shape!r:.100}")
            size = math.prod(shape)
            # NumPy refuses dimensions past its index range even in empty arrays.
            if size == 0 and any(d > limits.max_message_bytes for d in shape):
                raise ValueError(f"bad shape {shape!r:.100}: a dimension exceeds max_message_bytes")
        except (TypeError, ValueError, IndexError) as error:
            if isinstance(error, IndexError):
                error = ValueError(f"unknown dtype code {descriptor[0]!r}")
            raise ProtocolError(f"malformed tensor descriptor {descriptor!r:.100}: {error}") from None
        total += size * dtype.itemsize
        if total > limits.max_message_bytes:
            raise ProtocolError(f"message exceeds max_message_bytes={limits.max_message_bytes}")
        shapes.append((shape, dtype))
    return shapes


class _ExtensionDecoder:
    """msgpack ext_hook binding placeholders to tensors and rebuilding tuples.

    A class rather than a closure: a self-referencing closure is a reference cycle that would
    keep every received tensor alive until the cyclic garbage collector runs.
    """

    __slots__ = ("decode_leaf", "depth", "max_depth", "tensors")

    def __init__(self, tensors: Sequence[Tensor], decode_leaf: Callable[[Tensor], Any] | None, max_depth: int) -> None:
        self.tensors = tensors
        self.decode_leaf = decode_leaf
        self.max_depth = max_depth
        self.depth = 0

    def __call__(self, code: int, data: bytes) -> Any:
        if code == TENSOR_EXT:
            (index,) = _INDEX.unpack(data)
            if index >= len(self.tensors):
                raise ValueError(f"tensor placeholder {index} but only {len(self.tensors)} tensor frames")
            tensor = self.tensors[index]
            return tensor if self.decode_leaf is None else self.decode_leaf(tensor)
        if code == TUPLE_EXT:
            self.depth += 1
            if self.depth > self.max_depth:
                raise ValueError(f"value nests deeper than max_depth={self.max_depth}")
            try:
                return tuple(msgpack.unpackb(data, raw=False, ext_hook=self))
            finally:
                self.depth -= 1
        raise ValueError(f"unknown extension type {code}")


def decode_body(
    body: bytes,
    tensors: Sequence[Tensor],
    decode_leaf: Callable[[Tensor], Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Any:
    """Decode a header's body, binding tensor placeholders to ``tensors`` via ``decode_leaf``.

    Raises:
        ProtocolError: for malformed bodies, unknown extensions or bad tensor indices.
    """
    ext_hook = _ExtensionDecoder(tensors, decode_leaf, limits.max_depth)
    try:
        value = msgpack.unpackb(body, raw=False, ext_hook=ext_hook)
    except ProtocolError:
        raise
    except Exception as error:
        raise ProtocolError(f"malformed message body: {error}") from None
    if len(body) > limits.max_depth:  # each nesting level takes at least one byte
        check_depth(value, limits.max_depth)
    return value


def check_depth(value: Any, max_depth: int) -> None:
    """Refuse a value tree whose lists, tuples and dicts nest deeper than ``max_depth``.

    Raises:
        ProtocolError: naming the limit.
    """
    stack = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if type(node) not in _CONTAINERS:
            continue
        if depth >= max_depth:
            raise ProtocolError(f"value nests deeper than max_depth={max_depth}")
        children = node.values() if type(node) is dict else node
        stack.extend((child, depth + 1) for child in children if type(child) in _CONTAINERS)


def check_frames(header: Header, frames: Sequence[Any]) -> None:
    """Check that the tensor frames following a header match its descriptors.

    Raises:
        ProtocolError: for a missing or extra frame, or a frame of the wrong size.
    """
    if len(frames) != len(header.shapes):
        raise ProtocolError(f"header announces {len(header.shapes)} tensor frames, got {len(frames)}")
    for frame, (shape, dtype) in zip(frames, header.shapes, strict=True):
        expected = math.prod(shape) * dtype.itemsize
        if len(frame) != expected:
            raise ProtocolError(
                f"tensor frame of {len(frame)} bytes does not match shape {shape} {dtype.name} ({expected} bytes)"
            )


def decode_frames(
    frames: Sequence[bytes | memoryview],
    decode_leaf: Callable[[Tensor], Any] | None = None,
    limits: Limits = DEFAULT_LIMITS,
    header: Header | None = None,
) -> tuple[Header, Any]:
    """Decode a whole message already in memory (copies each tensor frame once).

    ``header`` is frame 0 already parsed and checked against the tensor frames, if it was.
    """
    if not frames:
        raise ProtocolError("empty message")
    if header is None:
        header = parse_header(frames[0], limits)
        check_frames(header, frames[1:])
    tensors = []
    for frame, (shape, dtype) in zip(frames[1:], header.shapes, strict=True):
        array = aligned_empty(shape, dtype)
        if array.nbytes:
            array.reshape(-1).view(np.uint8)[:] = np.frombuffer(frame, np.uint8)
        tensors.append(Tensor._wrap(array))
    return header, decode_body(header.body, tensors, decode_leaf, limits)
