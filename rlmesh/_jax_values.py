"""JAX values for rlmesh: the availability check, tensor <-> jax.Array conversion, the bridge.

This module imports without JAX; every public function raises the ImportError from
:func:`ensure_available` when JAX is missing or too old.

Decode fast path (why ``asarray`` does not just call ``jnp.from_dlpack``): on jax 0.10.2
CPU, ``jnp.from_dlpack`` spends ~20 us in Python around a ~3 us C++ import. It asks the CPU
device for an external-ready-events stream (which raises and formats a ``JaxRuntimeError``
on CPU, ~7.5 us), re-wraps the result with ``jnp.asarray(arr, dtype=canonical)`` and places
it. ``asarray`` calls the same C++ import (``dlpack_managed_tensor_to_buffer``) directly for
rlmesh Tensors, whose storage is always 64-byte aligned (the alignment XLA's CPU client needs
to alias memory), and keeps ``jnp.from_dlpack`` for everything else and for 64-bit dtypes
while ``jax_enable_x64`` is off (where JAX demotes them). The fast path is probed once and
disabled if a future jaxlib changes the private signature (``test_jax_values`` flags that).
Both paths return the same thing: a committed, immutable CPU ``jax.Array`` aliasing the tensor's
memory and keeping it alive through the DLPack capsule. Numbers: ``benchmarks/decode_latency.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

from rlmesh.bridges import Bridge, to_numpy
from rlmesh.spaces import Space
from rlmesh.spaces import space_from_spec as _space_from_spec
from rlmesh.specs import (
    SpaceSpec,
)
from rlmesh.tensor import Tensor, wire_dtype

try:  # JAX is an optional extra: importing this module must work without it.
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - exercised only where jax is not installed
    jax = None  # type: ignore[assignment]
    jnp = None  # type: ignore[assignment]

__all__ = [
    "JAX_BRIDGE",
    "MIN_JAX_VERSION",
    "JaxValue",
    "asarray",
    "check_jax_version",
    "ensure_available",
    "from_array",
    "space_from_spec",
]

JaxValue: TypeAlias = (
    bool | int | float | str | bytes | object | list["JaxValue"] | tuple["JaxValue", ...] | dict[str, "JaxValue"] | None
)
"""A value in the JAX backend: Python primitives, ``jax.Array`` leaves, and containers."""

MIN_JAX_VERSION: tuple[int, int, int] = (0, 4, 24)
"""The oldest supported jax: the first release whose DLPack import supports bool."""

_INSTALL_HINT = 'install the JAX extra: pip install "rlmesh[jax]"'
_VERSION_RE = re.compile(r"^\s*(\d+)\.(\d+)(?:\.(\d+))?")


def check_jax_version(found: str | None) -> None:
    """Raise ImportError unless ``found`` (a jax ``__version__``, or None) meets the floor.

    A pure function of its argument, so the floor is testable without installing old jax.

    Args:
        found: The installed jax version string (``"0.4.24"``, ``"0.5.0rc1"``,
            ``"0.4.30.dev20240601"``), or None when jax is not installed.

    Raises:
        ImportError: when jax is missing, older than :data:`MIN_JAX_VERSION`, or its version
            cannot be parsed; the message names the floor, the version found and the extra.

    Example:
        >>> check_jax_version("0.10.2")
        >>> check_jax_version("0.4.23")
        Traceback (most recent call last):
        ImportError: rlmesh.jax requires jax >= 0.4.24, found jax 0.4.23; ...
    """
    floor = ".".join(map(str, MIN_JAX_VERSION))
    if found is None:
        raise ImportError(f"rlmesh.jax requires jax >= {floor}, but jax is not installed; {_INSTALL_HINT}")
    match = _VERSION_RE.match(found)
    if match is None:
        raise ImportError(
            f"rlmesh.jax requires jax >= {floor}, found jax with unparseable version {found!r}; {_INSTALL_HINT}"
        )
    version = tuple(int(part or 0) for part in match.groups())
    if version < MIN_JAX_VERSION:
        raise ImportError(
            f'rlmesh.jax requires jax >= {floor}, found jax {found}; upgrade it: pip install -U "rlmesh[jax]"'
        )


def _availability_error() -> ImportError | None:
    try:
        check_jax_version(None if jax is None else jax.__version__)
    except ImportError as error:
        return error
    return None


_UNAVAILABLE: ImportError | None = _availability_error()


def ensure_available() -> None:
    """Raise if JAX is not installed or is older than the supported floor.

    Raises:
        ImportError: naming the ``jax`` extra (``pip install "rlmesh[jax]"``), the floor
            (0.4.24) and the version found.
    """
    if _UNAVAILABLE is not None:
        raise ImportError(str(_UNAVAILABLE))


# -- decode: Tensor -> jax.Array ---------------------------------------------------------

# Resolved lazily on first use (so importing rlmesh.jax does not initialise JAX's backends):
# a callable (numpy array) -> jax.Array aliasing it, or None when the private API is absent.
_fast_import: Callable[[np.ndarray], Any] | None = None
_fast_probed = False


def _resolve_fast_import() -> Callable[[np.ndarray], Any] | None:
    """Bind jaxlib's C++ DLPack import to the CPU device, and check that it aliases memory."""
    try:
        from jax._src.lib import _jax, jaxlib_extension_version

        to_buffer = _jax.dlpack_managed_tensor_to_buffer
        device = jax.local_devices(backend="cpu")[0]
        if jaxlib_extension_version >= 467:

            def fast(array: np.ndarray) -> Any:
                return to_buffer(array.__dlpack__(), device, None, None, 1)  # 1 = kDLCPU

        else:

            def fast(array: np.ndarray) -> Any:
                return to_buffer(array.__dlpack__(), device, None, None)

        probe = Tensor.from_numpy(np.arange(16, dtype=np.float32)).numpy()
        result = fast(probe)
        if not (
            isinstance(result, jax.Array)
            and result.unsafe_buffer_pointer() == probe.ctypes.data
            and result.dtype == probe.dtype
            and np.array_equal(np.asarray(result), probe)
        ):
            return None
        return fast
    except Exception:  # any drift in the private API: use the public path
        return None


def _fast() -> Callable[[np.ndarray], Any] | None:
    global _fast_import, _fast_probed
    if not _fast_probed:
        ensure_available()
        _fast_import = _resolve_fast_import()
        _fast_probed = True
    return _fast_import


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def asarray(tensor: Tensor | bool | int | float) -> Any:
    """Return a JAX array for an RLMesh tensor.

    Args:
        tensor: RLMesh tensor value to convert (a Python bool/int/float becomes a 0-d
            array; any other DLPack producer is accepted too).

    Returns:
        JAX array imported over DLPack. XLA shares 64-byte-aligned buffers (every rlmesh
        Tensor's storage) and copies otherwise; either way the result is immutable. With
        ``jax_enable_x64`` off, int64/uint64/float64 tensors come back as int32/uint32/float32
        copies (JAX's own demotion: values outside the 32-bit range wrap).

    Raises:
        ImportError: when JAX is unavailable (see :func:`ensure_available`).
        TypeError: for values that are neither tensors, DLPack producers nor Python scalars.

    Example:
        >>> t = Tensor.from_numpy(np.arange(4, dtype=np.float32))
        >>> a = asarray(t)
        >>> a.unsafe_buffer_pointer() == t.data_ptr
        True
    """
    if type(tensor) is Tensor:
        fast = _fast_import if _fast_probed else _fast()
        array = tensor.numpy()
        if fast is not None and (array.dtype.itemsize != 8 or _x64_enabled()):
            return fast(array)
        return jnp.from_dlpack(tensor)
    ensure_available()
    if isinstance(tensor, bool | int | float | np.generic):
        return jnp.asarray(tensor)
    if isinstance(tensor, Tensor) or hasattr(tensor, "__dlpack__"):
        return jnp.from_dlpack(tensor)
    raise TypeError(
        f"asarray expects an rlmesh Tensor, a DLPack producer or a Python scalar, got {type(tensor).__qualname__}"
    )


# -- encode: jax.Array -> Tensor | primitive -----------------------------------------------


def from_array(array: Any) -> Tensor | bool | int | float | str | bytes | None:
    """Encode a JAX array as an RLMesh value.

    Moves the array to the CPU if needed, blocks until it is ready, and copies its elements
    into a fresh, aligned Tensor.

    Args:
        array: JAX array to encode (a concrete ``jax.Array``; not a tracer, list or NumPy
            array).

    Returns:
        Tensor for non-scalar arrays, or a primitive (bool, int, float) for 0-d arrays.

    Raises:
        ImportError: when JAX is unavailable.
        TypeError: when ``array`` is not a concrete ``jax.Array``.
        ValueError: for dtypes that cannot cross the wire (bfloat16, complex, int4, ...).

    Example:
        >>> from_array(jnp.arange(3)).shape
        (3,)
        >>> from_array(jnp.float32(1.5))
        1.5
    """
    ensure_available()
    if not isinstance(array, jax.Array):
        raise TypeError(
            f"from_array expects a jax.Array, got {type(array).__qualname__}; use "
            "rlmesh.Tensor.from_numpy for NumPy arrays and lists"
        )
    if isinstance(array, jax.core.Tracer):
        raise TypeError(
            "from_array got a traced value inside jax.jit/vmap/grad; values cross the wire "
            "only outside transformations (use rlmesh.integrations.jit_step to step inside jit)"
        )
    try:
        dtype = wire_dtype(array.dtype)
    except ValueError as error:
        raise ValueError(f"cannot encode a jax.Array of shape {array.shape}: {error}") from None
    if not _on_cpu(array):
        array = jax.device_put(array, jax.local_devices(backend="cpu")[0])
    array.block_until_ready()
    if array.ndim == 0:
        return array.item()
    tensor = Tensor.empty(array.shape, dtype)
    np.copyto(tensor.numpy(), np.asarray(array), casting="no")
    return tensor


def _on_cpu(array: Any) -> bool:
    try:
        return all(device.platform == "cpu" for device in array.devices())
    except Exception:
        return False


def _encode_leaf(value: Any) -> Any:
    if jax is not None and isinstance(value, jax.Array):
        return from_array(value)
    return NotImplemented


def _from_numpy(array: np.ndarray) -> Any:
    ensure_available()
    return jnp.asarray(array)


def _is_array(value: Any) -> bool:
    return jax is not None and isinstance(value, jax.Array)


JAX_BRIDGE = Bridge(
    name="jax",
    decode_leaf=asarray,
    encode_leaf=_encode_leaf,
    from_numpy=_from_numpy,
    to_numpy=to_numpy,
    is_array=_is_array,
    checks_locally=True,
)
"""The JAX backend's leaf table: tensors decode to immutable, zero-copy ``jax.Array``s."""


def space_from_spec(spec: SpaceSpec) -> Space[JaxValue]:
    """Create a JAX-adapted space wrapper for a native space spec.

    Args:
        spec: A :class:`rlmesh.specs.SpaceSpec` (or its dict form).

    Returns:
        A space whose ``sample()`` returns JAX arrays (seeded through ``space.seed``) and whose
        ``contains()`` accepts JAX arrays, NumPy arrays and Python values.

    Example:
        >>> space = space_from_spec(BoxSpec((2,), "float32", -1.0, 1.0))
        >>> space.seed(0); space.contains(space.sample())
        0
        True
    """
    ensure_available()
    return _space_from_spec(spec, bridge=JAX_BRIDGE)
