import numpy as np
import pytest

from rlmesh import Tensor
from rlmesh.tensor import ALIGNMENT, WIRE_DTYPES, aligned_empty


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_every_wire_dtype_round_trips_through_numpy_and_bytes(dtype: str) -> None:
    source = (np.arange(12) % 2 == 0) if dtype == "bool" else np.arange(12).astype(dtype)
    source = source.reshape(3, 4)
    tensor = Tensor.from_numpy(source)
    assert tensor.shape == (3, 4) and tensor.dtype == dtype
    assert tensor.ndim == 2 and tensor.size == 12 and tensor.nbytes == source.nbytes
    assert tensor.data_ptr % ALIGNMENT == 0
    np.testing.assert_array_equal(np.from_dlpack(tensor), source)
    again = Tensor.from_bytes(source.tobytes(), (3, 4), dtype)
    assert again == tensor


def test_numpy_dlpack_import_shares_memory() -> None:
    tensor = Tensor.from_numpy(np.zeros(16, np.float32))
    view = np.from_dlpack(tensor)
    assert view.ctypes.data == tensor.data_ptr
    view[3] = 7.0
    assert tensor.numpy()[3] == 7.0
    assert tensor.numpy().flags.writeable


def test_from_numpy_copies_and_aligns_unaligned_input() -> None:
    raw = np.zeros(65, np.uint8)[1:]  # deliberately misaligned
    tensor = Tensor.from_numpy(raw)
    assert tensor.data_ptr % ALIGNMENT == 0
    assert tensor.data_ptr != raw.ctypes.data


def test_from_dlpack_copies_any_producer() -> None:
    source = np.arange(6, dtype=np.int16)
    tensor = Tensor.from_dlpack(source)
    assert tensor.dtype == "int16" and tensor.data_ptr != source.ctypes.data
    np.testing.assert_array_equal(tensor.numpy(), source)


@pytest.mark.parametrize("dtype", ["complex64", "object", "U3", "datetime64[s]"])
def test_unsupported_dtypes_name_the_dtype(dtype: str) -> None:
    with pytest.raises(ValueError, match="cannot cross the wire|not a wire dtype"):
        Tensor.from_numpy(np.zeros(2, dtype=dtype))


def test_bfloat16_refused_with_a_hint() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes provides bfloat16")
    with pytest.raises(ValueError, match=r"bfloat16.*float32"):
        Tensor.from_numpy(np.zeros(2, dtype=ml_dtypes.bfloat16))


def test_from_bytes_checks_the_byte_count() -> None:
    with pytest.raises(ValueError, match=r"7 bytes cannot fill a tensor of shape \(2,\)"):
        Tensor.from_bytes(b"1234567", (2,), "float32")


def test_aligned_empty_is_aligned_for_many_sizes() -> None:
    for size in (0, 1, 3, 17, 1000, 4097):
        assert aligned_empty((size,), np.uint8).ctypes.data % ALIGNMENT == 0
