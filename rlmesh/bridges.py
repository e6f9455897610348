"""Backend bridges: the small table of leaf functions that makes a backend.

A backend (plain ``rlmesh``, ``rlmesh.numpy``, ``rlmesh.jax``) differs from the others only
in what a tensor leaf becomes on the way in and what its array type is on the way out. All
client, space and model logic is shared and takes a :class:`Bridge`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlmesh.tensor import Tensor


@dataclass(frozen=True)
class Bridge:
    """How one backend turns wire tensors into its values and back.

    Attributes:
        name: Backend name shown in messages (``"rlmesh"``, ``"numpy"``, ``"jax"``).
        decode_leaf: Turn a received :class:`Tensor` (aligned, owned) into a backend value.
        encode_leaf: Turn a backend array that is not a NumPy array into a Tensor or a
            Python primitive (0-d arrays); return ``NotImplemented`` for types it does not
            know. NumPy arrays and scalars are handled by the codec for every backend.
        from_numpy: Turn a NumPy array (e.g. a space sample) into a backend value.
        to_numpy: Turn a backend array leaf into a NumPy array (may share memory).
        is_array: Whether a leaf is this backend's array type.
        checks_locally: Whether clients of this backend check actions against the contract
            before sending them (the server checks every action either way).
        place: Put an observation tree on a device (None: values stay where they are).
        resolve_device: Turn a device request (None, ``"cpu"``, a name or a device object)
            into what ``place`` takes; raises ValueError for devices the backend cannot use.
        vmap: Derive a batched function from a per-value one, or None when the backend has
            no vectorising transform.
    """

    name: str
    decode_leaf: Callable[[Tensor], Any]
    encode_leaf: Callable[[Any], Any]
    from_numpy: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    is_array: Callable[[Any], bool]
    checks_locally: bool = False
    place: Callable[[Any, Any], Any] | None = None
    resolve_device: Callable[[Any], Any] | None = None
    vmap: Callable[[Callable[[Any], Any]], Callable[[Any], Any]] | None = None

    def device_for(self, request: Any) -> Any:
        """The device for a ``device=`` request, or None when values stay on the host.

        Raises:
            ValueError: the backend cannot place values on ``request``.
        """
        if self.resolve_device is not None:
            return self.resolve_device(request)
        if request is not None and request != "cpu":
            raise ValueError(
                f"device {request!r}: the {self.name!r} backend keeps observations on the host; pass None or "
                "'cpu' (use rlmesh.jax to place them on an accelerator)"
            )
        return None


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy view (or copy, for device arrays) of an array leaf of any backend."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Tensor):
        return value.numpy()
    return np.asarray(value)


def _not_handled(value: Any) -> Any:
    return NotImplemented


TENSOR_BRIDGE = Bridge(
    name="rlmesh",
    decode_leaf=lambda tensor: tensor,
    encode_leaf=_not_handled,
    from_numpy=lambda array: Tensor.from_numpy(array) if array.ndim else array.item(),
    to_numpy=to_numpy,
    is_array=lambda value: isinstance(value, Tensor),
)

NUMPY_BRIDGE = Bridge(
    name="numpy",
    decode_leaf=Tensor.numpy,
    encode_leaf=_not_handled,
    from_numpy=lambda array: array if array.ndim else array[()],
    to_numpy=to_numpy,
    is_array=lambda value: isinstance(value, np.ndarray),
)


_PRIMITIVES = (bool, int, float, str, bytes)


def converter(source: Bridge, target: Bridge) -> Callable[[Any], Any]:
    """A function re-decoding value trees of ``source``'s backend into ``target``'s.

    Tensors are decoded by ``target`` (zero-copy where it can); other arrays go through NumPy.
    """
    if source is target:
        return lambda value: value
    decode, from_numpy, is_target = target.decode_leaf, target.from_numpy, target.is_array

    def convert(value: Any) -> Any:
        if value is None or isinstance(value, _PRIMITIVES) or is_target(value):
            return value
        if isinstance(value, Tensor):
            return decode(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {key: convert(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(convert(item) for item in value)
        if isinstance(value, list):
            return [convert(item) for item in value]
        return from_numpy(to_numpy(value))

    return convert


def host_tree(value: Any) -> Any:
    """A value tree with NumPy arrays (Python scalars for 0-d) in place of backend arrays."""
    if value is None or isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, dict):
        return {key: host_tree(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return tuple(host_tree(item) for item in value)
    if isinstance(value, list):
        return [host_tree(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    array = to_numpy(value)
    return array.item() if array.ndim == 0 and array.dtype != object else array
