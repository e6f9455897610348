import msgpack
import numpy as np
import pytest

from rlmesh import ProtocolError, Tensor
from rlmesh.codec import Limits, decode_frames, encode_message, parse_header
from rlmesh.tensor import WIRE_DTYPES


def round_trip(value, **kwargs):
    frames = [bytes(memoryview(f)) for f in encode_message("op", 9, value, **kwargs)]
    header, decoded = decode_frames(frames)
    assert header.kind == "op" and header.request_id == 9
    return frames, decoded


def test_primitives_and_containers_keep_their_types() -> None:
    value = {
        "none": None,
        "b": True,
        "i": -3,
        "big": 2**63 - 1,
        "f": 1.5,
        "s": "é",
        "by": b"\x00\x01",
        "list": [1, (2, 3), [4]],
        "tuple": (1, (2, (3,))),
        "nested": {"a": {"b": []}},
    }
    frames, decoded = round_trip(value)
    assert len(frames) == 1  # no tensors, header only
    assert decoded == value
    assert isinstance(decoded["tuple"], tuple) and isinstance(decoded["tuple"][1][1], tuple)
    assert isinstance(decoded["list"], list) and isinstance(decoded["list"][1], tuple)


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_every_dtype_travels_as_its_own_raw_frame(dtype: str) -> None:
    array = (np.arange(24) % 3 == 0) if dtype == "bool" else np.arange(24).astype(dtype)
    array = array.reshape(2, 3, 4)
    frames, decoded = round_trip({"x": array})
    assert len(frames) == 2 and len(frames[1]) == array.nbytes
    assert isinstance(decoded["x"], Tensor) and decoded["x"].dtype == dtype
    np.testing.assert_array_equal(decoded["x"].numpy(), array)


def test_numpy_scalars_and_zero_d_arrays_become_primitives() -> None:
    _, decoded = round_trip([np.float32(1.5), np.int64(3), np.bool_(True), np.array(2.0)])
    assert decoded == [1.5, 3, True, 2.0]
    assert type(decoded[1]) is int and type(decoded[2]) is bool


def test_non_contiguous_arrays_are_sent_in_c_order() -> None:
    array = np.arange(12, dtype=np.int32).reshape(3, 4).T
    _, decoded = round_trip(array)
    np.testing.assert_array_equal(decoded.numpy(), array)


def test_unknown_types_are_refused_with_the_type_name() -> None:
    with pytest.raises(TypeError, match="object"):
        encode_message("op", 1, {"x": object()})
    with pytest.raises(ValueError, match="complex128"):
        encode_message("op", 1, np.zeros(2, np.complex128))


def test_tensor_count_and_size_limits_on_encode() -> None:
    with pytest.raises(TypeError, match="at most 2 tensors"):
        encode_message("op", 1, [np.zeros(1)] * 3, limits=Limits(max_tensors=2))
    with pytest.raises(TypeError, match="max_message_bytes=100"):
        encode_message("op", 1, np.zeros(100), limits=Limits(max_message_bytes=100))


def test_depth_limit_on_tuples() -> None:
    value = ()
    for _ in range(70):
        value = (value,)
    with pytest.raises(TypeError, match="max_depth"):
        encode_message("op", 1, value)


@pytest.mark.parametrize(
    "frames, message",
    [
        ([b"\xc1garbage"], "malformed message header"),
        ([msgpack.packb([1, 2, 3, 4])], "malformed message header"),
        ([msgpack.packb(["op", 1, [[99, [2]]], msgpack.packb(None)])], "unknown dtype code"),
        ([msgpack.packb(["op", 1, [[0, [-1]]], msgpack.packb(None)])], "bad shape"),
        ([msgpack.packb(["op", 1, [[10, [2]]], msgpack.packb(None)]), b"short"], "does not match"),
        ([msgpack.packb(["op", 1, [[10, [1]]], msgpack.packb(None)])], "announces 1 tensor frames, got 0"),
        ([msgpack.packb(["op", 1, [], msgpack.packb(msgpack.ExtType(1, b"\x05\x00\x00\x00"))])], "placeholder 5"),
        ([msgpack.packb(["op", 1, [], msgpack.packb(msgpack.ExtType(42, b""))])], "unknown extension"),
        ([msgpack.packb(["op", 1, [], b"\xc1"])], "malformed message body"),
        ([msgpack.packb(["op", 1, [[10, [1 << 40]]], msgpack.packb(None)])], "max_message_bytes"),
    ],
)
def test_malformed_messages_raise_protocol_errors(frames, message) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode_frames(frames)


def test_header_larger_than_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds max_message_bytes"):
        parse_header(b"\x00" * 200, Limits(max_message_bytes=100))
