"""The JAX bridge: tensors decode to immutable, zero-copy ``jax.Array`` and encode back.

Importing this module works without JAX; every public function raises the ImportError from
:func:`~rlmesh._jax_version.ensure_available` when JAX is missing or too old.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import numpy as np

from rlmesh._jax_dlpack import fast_import
from rlmesh._jax_version import ensure_available
from rlmesh.bridges import Bridge, to_numpy
from rlmesh.tensor import Tensor, aligned_empty, wire_dtype

try:  # JAX is an optional extra: importing this module must work without it.
    import jax
    import jax.numpy as jnp
except ImportError:  # pragma: no cover - exercised only where jax is not installed
    jax = None  # type: ignore[assignment]
    jnp = None  # type: ignore[assignment]

__all__ = ["JAX_BRIDGE", "JaxValue", "asarray", "from_array"]

JaxValue: TypeAlias = (
    bool | int | float | str | bytes | object | list["JaxValue"] | tuple["JaxValue", ...] | dict[str, "JaxValue"] | None
)
"""A value in the JAX backend: Python primitives, ``jax.Array`` leaves, and containers."""


def _require() -> None:
    """Check JAX now, and bind it here if it became importable after this module was imported."""
    global jax, jnp
    ensure_available()
    if jax is None:
        import jax as jax_module
        import jax.numpy as jnp_module

        jax, jnp = jax_module, jnp_module


# The fast path, resolved on first decode (so importing rlmesh.jax does not start JAX's backends).
_fast: Callable[[np.ndarray], Any] | None = None
_fast_probed = False


def _probe() -> Callable[[np.ndarray], Any] | None:
    global _fast, _fast_probed
    _require()
    _fast, _fast_probed = fast_import(), True
    return _fast


# The 32-bit types JAX gives 64-bit values while ``jax_enable_x64`` is off.
_DEMOTED = {
    np.dtype(np.int64): np.dtype(np.int32),
    np.dtype(np.uint64): np.dtype(np.uint32),
    np.dtype(np.float64): np.dtype(np.float32),
}


def _x64_enabled() -> bool:
    return bool(jax.config.jax_enable_x64)


def asarray(tensor: Tensor | bool | int | float) -> Any:
    """Return a JAX array for an RLMesh tensor.

    Args:
        tensor: RLMesh tensor value to convert (a Python bool/int/float becomes a 0-d
            array; any other DLPack producer is accepted too).

    Returns:
        JAX array sharing the tensor's memory (jaxlib's aliasing import, else DLPack),
        uncommitted like ``jnp.asarray`` of a NumPy array. XLA shares 64-byte-aligned
        buffers (every rlmesh Tensor's storage) and copies otherwise; either way the result
        is immutable. With
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
        fast = _fast if _fast_probed else _probe()
        array = tensor.numpy()
        if fast is not None:
            if array.dtype.itemsize != 8 or _x64_enabled():
                return fast(array)
            narrow = _DEMOTED.get(array.dtype)
            if narrow is not None:  # JAX's own demotion, done here: its public import is slow
                demoted = aligned_empty(array.shape, narrow)
                np.copyto(demoted, array, casting="unsafe")
                return fast(demoted)
        return jnp.from_dlpack(tensor)
    _require()
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
    _require()
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
    _require()
    return jnp.asarray(array)


def _is_array(value: Any) -> bool:
    return jax is not None and isinstance(value, jax.Array)


def _resolve_device(request: Any) -> Any:
    """A ``jax.Device`` for a device object or a name such as ``"cpu"``, ``"gpu"``, ``"cuda:1"``."""
    if request is None or not isinstance(request, str):
        return request
    _require()
    platform, _, index = request.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        return jax.devices(platform)[int(index or 0)]
    except (RuntimeError, IndexError, ValueError) as error:
        raise ValueError(f"device {request!r} is not available to JAX ({error}); devices: {jax.devices()}") from None


def _place(value: Any, device: Any) -> Any:
    return jax.device_put(value, device)


def _vmap(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    _require()
    return jax.vmap(function)


JAX_BRIDGE = Bridge(
    name="jax",
    decode_leaf=asarray,
    encode_leaf=_encode_leaf,
    from_numpy=_from_numpy,
    to_numpy=to_numpy,
    is_array=_is_array,
    checks_locally=True,
    place=_place,
    resolve_device=_resolve_device,
    vmap=_vmap,
)
"""The JAX backend's leaf table: tensors decode to immutable, zero-copy ``jax.Array``s."""
