"""rlmesh.jax value helpers: version floor, DLPack import, encode, spaces, the bridge table."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rlmesh.jax as rj
from rlmesh._jax_dlpack import resolve_fast_import
from rlmesh._jax_version import MIN_JAX_VERSION, check_jax_version
from rlmesh.jax import JAX_BRIDGE
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    TupleSpec,
)
from rlmesh.tensor import WIRE_DTYPES, Tensor

REPO_ROOT = Path(__file__).resolve().parents[2]
SIXTY_FOUR_BIT = ("int64", "uint64", "float64")
BINARY4 = MultiBinarySpec((4,))


def _values(dtype: str, shape: tuple[int, ...] = (3, 5)) -> np.ndarray:
    size = int(np.prod(shape))
    if dtype == "bool":
        return (np.arange(size) % 3 == 0).reshape(shape)
    if np.dtype(dtype).kind in "iu":
        # The dtype's extremes are in there, so 64-bit values must survive exactly.
        info = np.iinfo(dtype)
        array = (np.arange(size) * 7 % 100).astype(dtype)
        array.flat[0], array.flat[-1] = info.min, info.max
        return array.reshape(shape)
    return (np.arange(size, dtype=np.float64) * 1.25 - 3).astype(dtype).reshape(shape)


# -- version floor -----------------------------------------------------------------------


@pytest.mark.parametrize("found", ["0.4.24", "0.4.24.dev20240101", "0.4.30", "0.5.0rc1", "0.10.2", "1.0"])
def test_supported_versions_pass(found: str) -> None:
    check_jax_version(found)


@pytest.mark.parametrize("found", ["0.4.23", "0.4.9", "0.3.25", "0.4.21"])
def test_old_versions_name_the_floor_and_the_version(found: str) -> None:
    with pytest.raises(ImportError) as error:
        check_jax_version(found)
    message = str(error.value)
    assert "0.4.24" in message and found in message and "rlmesh[jax]" in message


def test_missing_and_unparseable_versions_name_the_extra() -> None:
    with pytest.raises(ImportError, match=r'pip install "rlmesh\[jax\]"'):
        check_jax_version(None)
    with pytest.raises(ImportError, match="unparseable"):
        check_jax_version("nightly")


def test_installed_jax_is_available() -> None:
    assert MIN_JAX_VERSION == (0, 4, 24)
    rj.ensure_available()


def test_import_without_jax_fails_only_on_use() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["jax"] = None  # makes `import jax` raise ImportError
        import numpy as np
        import rlmesh.jax as rj
        from rlmesh.tensor import Tensor
        for call in (
            rj.ensure_available,
            lambda: rj.asarray(Tensor.from_numpy(np.zeros(2))),
            lambda: rj.from_array(np.zeros(2)),
            lambda: rj.RemoteEnv("tcp://127.0.0.1:9"),
        ):
            try:
                call()
            except ImportError as error:
                assert 'rlmesh[jax]' in str(error), error
            else:
                raise AssertionError("no ImportError")
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_availability_is_checked_when_called_not_at_import() -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["jax"] = None
        import rlmesh.jax as rj
        try:
            rj.ensure_available()
        except ImportError:
            pass
        else:
            raise AssertionError("no ImportError while jax is hidden")
        del sys.modules["jax"]  # jax becomes importable after rlmesh.jax was imported
        rj.ensure_available()
        print("ok")
        """
    )
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# -- asarray ------------------------------------------------------------------------------


def test_decode_uses_the_direct_dlpack_import() -> None:
    # Guards the fast path: if a jaxlib upgrade breaks it, asarray silently falls back to
    # jnp.from_dlpack (~20 us slower); this test says so.
    assert resolve_fast_import() is not None


def test_decoded_arrays_are_uncommitted_like_jnp_asarray() -> None:
    """Mixing decoded observations with fresh parameters must not make a jitted step compile twice."""
    observation = rj.asarray(Tensor.from_numpy(np.arange(8, dtype=np.float32).reshape(2, 4)))
    assert observation._committed is False
    assert observation._committed == jnp.asarray(np.zeros(2))._committed

    @jax.jit
    def step(params: jax.Array, obs: jax.Array) -> jax.Array:
        return params * 0.5 + obs.sum()

    params = jnp.ones(3)  # uncommitted, as model.init returns
    for _ in range(3):
        params = step(params, rj.asarray(Tensor.from_numpy(np.ones((2, 4), np.float32))))
    assert step._cache_size() == 1


@pytest.mark.parametrize("dtype", WIRE_DTYPES)
def test_every_dtype_round_trips_with_x64(dtype: str) -> None:
    with jax.enable_x64(True):
        source = _values(dtype)
        tensor = Tensor.from_numpy(source)
        array = rj.asarray(tensor)
        assert isinstance(array, jax.Array)
        assert array.dtype == np.dtype(dtype) and array.shape == source.shape
        np.testing.assert_array_equal(np.asarray(array), source)
        assert array.unsafe_buffer_pointer() == tensor.data_ptr
        back = rj.from_array(array)
        assert isinstance(back, Tensor) and back == tensor
        assert back.data_ptr != tensor.data_ptr  # a fresh tensor, not the decoded buffer


@pytest.mark.parametrize("dtype", SIXTY_FOUR_BIT)
def test_sixty_four_bit_dtypes_demote_without_x64(dtype: str) -> None:
    with jax.enable_x64(False):
        tensor = Tensor.from_numpy(np.arange(6, dtype=dtype).reshape(2, 3))
        array = rj.asarray(tensor)
        expected = {"int64": np.int32, "uint64": np.uint32, "float64": np.float32}[dtype]
        assert array.dtype == np.dtype(expected)
        np.testing.assert_array_equal(np.asarray(array), np.arange(6).reshape(2, 3))
        assert array.unsafe_buffer_pointer() != tensor.data_ptr  # demotion is a copy
        assert isinstance(rj.from_array(array), Tensor)


@pytest.mark.parametrize("dtype", [d for d in WIRE_DTYPES if d not in SIXTY_FOUR_BIT])
def test_narrow_dtypes_share_memory_without_x64(dtype: str) -> None:
    with jax.enable_x64(False):
        tensor = Tensor.from_numpy(_values(dtype))
        array = rj.asarray(tensor)
        assert array.dtype == np.dtype(dtype)
        assert array.unsafe_buffer_pointer() == tensor.data_ptr


def test_unaligned_producers_are_copied() -> None:
    raw = np.zeros(64 * 4 + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + 4  # 4 bytes past a 64-byte boundary
    unaligned = raw[start : start + 64].view(np.float32)
    unaligned[:] = np.arange(16, dtype=np.float32)
    array = rj.asarray(unaligned)
    assert array.unsafe_buffer_pointer() != unaligned.ctypes.data
    np.testing.assert_array_equal(np.asarray(array), np.arange(16, dtype=np.float32))


def test_python_scalars_become_zero_d_arrays() -> None:
    for value, kind in ((True, "b"), (3, "i"), (2.5, "f")):
        array = rj.asarray(value)
        assert isinstance(array, jax.Array) and array.shape == () and array.dtype.kind == kind
        assert array.item() == value


def test_asarray_rejects_other_values() -> None:
    for value in ("text", [1, 2], {"a": 1}, None):
        with pytest.raises(TypeError, match="Tensor"):
            rj.asarray(value)


def test_decoded_arrays_are_immutable_and_own_their_buffer() -> None:
    tensor = Tensor.from_numpy(np.arange(8, dtype=np.float32))
    array = rj.asarray(tensor)
    with pytest.raises(TypeError):
        array[0] = 100.0  # type: ignore[index]
    updated = array.at[0].set(100.0)
    assert float(updated[0]) == 100.0 and float(array[0]) == 0.0
    assert tensor.numpy()[0] == 0.0
    del tensor
    gc.collect()
    np.testing.assert_array_equal(np.asarray(array), np.arange(8, dtype=np.float32))


def test_zero_d_tensors_decode_to_zero_d_arrays() -> None:
    array = rj.asarray(Tensor.from_numpy(np.float32(1.5)))
    assert array.shape == () and float(array) == 1.5


# -- from_array -----------------------------------------------------------------------------


def test_zero_d_arrays_encode_to_primitives() -> None:
    cases = [
        (jnp.float32(1.5), float, 1.5),
        (jnp.int32(-3), int, -3),
        (jnp.bool_(True), bool, True),
    ]
    for array, kind, expected in cases:
        value = rj.from_array(array)
        assert type(value) is kind and value == expected


def test_from_array_copies_into_a_fresh_aligned_tensor() -> None:
    array = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
    tensor = rj.from_array(array)
    assert isinstance(tensor, Tensor) and tensor.shape == (3, 4) and tensor.dtype == "float32"
    assert tensor.data_ptr % 64 == 0 and tensor.data_ptr != array.unsafe_buffer_pointer()
    np.testing.assert_array_equal(tensor.numpy(), np.asarray(array))
    tensor.numpy()[0, 0] = 42  # the tensor owns its memory; the jax array is unaffected
    assert float(array[0, 0]) == 0.0


@pytest.mark.parametrize("value", [[1.0, 2.0], np.zeros(3, np.float32), np.float32(1.0), 1.0, "x"])
def test_from_array_accepts_only_jax_arrays(value: object) -> None:
    with pytest.raises(TypeError, match=r"expects a jax\.Array, got"):
        rj.from_array(value)


def test_from_array_refuses_bfloat16_clearly() -> None:
    with pytest.raises(ValueError, match=r"bfloat16.*float32"):
        rj.from_array(jnp.ones((2, 2), dtype=jnp.bfloat16))


def test_from_array_refuses_tracers() -> None:
    with pytest.raises(TypeError, match="traced"):
        jax.jit(rj.from_array)(jnp.ones(3))


# -- bridge and spaces -----------------------------------------------------------------------


def test_bridge_table() -> None:
    tensor = Tensor.from_numpy(np.ones(3, np.float32))
    decoded = JAX_BRIDGE.decode_leaf(tensor)
    assert JAX_BRIDGE.name == "jax" and JAX_BRIDGE.is_array(decoded)
    assert not JAX_BRIDGE.is_array(np.ones(3)) and not JAX_BRIDGE.is_array(tensor)
    assert JAX_BRIDGE.encode_leaf(np.ones(3)) is NotImplemented
    assert JAX_BRIDGE.encode_leaf("x") is NotImplemented
    assert JAX_BRIDGE.encode_leaf(decoded) == tensor
    assert isinstance(JAX_BRIDGE.from_numpy(np.ones(2)), jax.Array)
    assert isinstance(JAX_BRIDGE.to_numpy(decoded), np.ndarray)
    assert JAX_BRIDGE.checks_locally


def test_space_from_spec_samples_jax_values_reproducibly() -> None:
    spec = BoxSpec((3,), "float32", -1.0, 1.0)
    space = rj.space_from_spec(spec)
    space.seed(7)
    first = [space.sample() for _ in range(3)]
    space.seed(7)
    second = [space.sample() for _ in range(3)]
    for a, b in zip(first, second, strict=True):
        assert isinstance(a, jax.Array) and a.shape == (3,) and a.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert space.contains(a)
    assert not space.contains(jnp.full(3, 2.0, jnp.float32))
    assert not space.contains(jnp.zeros(4, jnp.float32))


def test_space_from_spec_nested_spaces() -> None:
    spec = DictSpec({"d": DiscreteSpec(3, 1), "t": TupleSpec([MultiBinarySpec((4,))])})
    space = rj.space_from_spec(spec)
    space.seed(0)
    sample = space.sample()
    assert 1 <= int(sample["d"]) <= 3
    assert isinstance(sample["t"][0], jax.Array) and sample["t"][0].shape == (4,)
    assert space.contains(sample)
    assert space.contains({"d": jnp.int32(2), "t": (jnp.zeros(4, jnp.int8),)})


@pytest.mark.parametrize("x64", [False, True])
def test_sixty_four_bit_spaces_follow_x64(x64: bool) -> None:
    with jax.enable_x64(x64):
        space = rj.space_from_spec(BoxSpec((2,), "float64", 0.0, 1.0))
        space.seed(0)
        sample = space.sample()
        assert sample.dtype == (jnp.float64 if x64 else jnp.float32)
        assert space.contains(sample)


def _accelerators() -> list[jax.Device]:
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.mark.gpu
@pytest.mark.skipif(not _accelerators(), reason="needs a GPU device for JAX")
def test_device_arrays_come_back_to_the_cpu() -> None:
    array = jax.device_put(jnp.arange(6, dtype=jnp.float32).reshape(2, 3), _accelerators()[0])
    tensor = rj.from_array(array)
    assert isinstance(tensor, Tensor) and tensor.shape == (2, 3)
    np.testing.assert_array_equal(tensor.numpy(), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert rj.from_array(jax.device_put(jnp.float32(2.5), _accelerators()[0])) == 2.5
    decoded = rj.asarray(tensor)  # decoding always lands on the CPU, where the buffer lives
    assert {device.platform for device in decoded.devices()} == {"cpu"}
