"""The receive buffer pool (large buffers) and the small-buffer slabs in rlmesh.tensor."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import numpy as np
import pytest

from rlmesh import tensor
from rlmesh.tensor import ALIGNMENT, aligned_empty, buffer_pool_bytes, set_buffer_pool_limit

MIB = 1 << 20


@pytest.fixture
def pool_limit() -> Iterator[None]:
    """Run with an empty pool capped at 16 MiB; restore the process default afterwards.

    Earlier tests in this process may leave received arrays in reference cycles (a traceback
    holding a frame); collected mid-test, they would return their buffers to the pool.
    """
    gc.collect()
    old = set_buffer_pool_limit(0)
    set_buffer_pool_limit(16 * MIB)
    yield
    set_buffer_pool_limit(0)
    set_buffer_pool_limit(old)


def test_a_free_large_buffer_is_reused(pool_limit) -> None:
    first = aligned_empty((MIB,), np.uint8)
    address = first.ctypes.data
    del first
    again = aligned_empty((MIB,), np.uint8)
    assert again.ctypes.data == address and again.ctypes.data % ALIGNMENT == 0


def test_a_buffer_still_referenced_is_never_handed_out_twice(pool_limit) -> None:
    first = aligned_empty((MIB,), np.uint8)
    view = first[10:]
    del first
    second = aligned_empty((MIB,), np.uint8)
    assert not np.shares_memory(view, second)
    view[:] = 1
    second[:] = 2
    assert view.min() == 1


def test_distinct_sizes_never_grow_the_pool_past_its_cap(pool_limit) -> None:
    for i in range(40):  # every request a new size, as a hostile peer would send
        buffer = aligned_empty((3 * MIB + i,), np.uint8)
        del buffer
        assert buffer_pool_bytes() <= 16 * MIB
    held = [aligned_empty((5 * MIB + i,), np.uint8) for i in range(6)]  # all in use at once
    assert buffer_pool_bytes() <= 16 * MIB
    del held


def test_buffers_over_the_cap_are_not_pooled(pool_limit) -> None:
    big = aligned_empty((32 * MIB,), np.uint8)
    assert buffer_pool_bytes() == 0
    del big


def test_lowering_the_cap_releases_free_buffers(pool_limit) -> None:
    kept = aligned_empty((4 * MIB,), np.uint8)
    free = aligned_empty((8 * MIB,), np.uint8)
    del free
    assert buffer_pool_bytes() >= 12 * MIB
    set_buffer_pool_limit(4 * MIB)
    assert buffer_pool_bytes() <= 4 * MIB + ALIGNMENT
    del kept


def test_bad_pool_limit_names_the_value() -> None:
    with pytest.raises(ValueError, match="non-negative int of bytes, got -1"):
        set_buffer_pool_limit(-1)


def test_small_buffers_are_aligned_disjoint_slab_slices() -> None:
    arrays = [aligned_empty((n,), np.uint8) for n in (1, 63, 64, 65, 1000, 16384)]
    for array in arrays:
        assert array.ctypes.data % ALIGNMENT == 0 and array.flags.writeable
    for i, array in enumerate(arrays):
        array[:] = i
    for i, array in enumerate(arrays):
        assert (array == i).all()
        for other in arrays[i + 1 :]:
            assert not np.shares_memory(array, other)


def test_a_new_slab_starts_when_one_is_full_and_old_ones_live_on() -> None:
    first = aligned_empty((8,), np.float64)
    first[:] = 1.0
    count = tensor._SLAB_BYTES // tensor._SMALL_BYTES + 2
    later = [aligned_empty((tensor._SMALL_BYTES,), np.uint8) for _ in range(count)]
    bases = {id(array.base) for array in later}
    assert len(bases) >= 2  # the slab rolled over
    assert (first == 1.0).all()  # the first slab is kept alive by its arrays
