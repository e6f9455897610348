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
        make_checker: Optional ``(spec, num_envs, role) -> check(value)`` that clients use to
            validate actions (``role="action"``) and, on request, observations
            (``role="observation"``) locally; ``num_envs`` is None for single envs. Without it
            the server still validates every action.
    """

    name: str
    decode_leaf: Callable[[Tensor], Any]
    encode_leaf: Callable[[Any], Any]
    from_numpy: Callable[[np.ndarray], Any]
    to_numpy: Callable[[Any], np.ndarray]
    is_array: Callable[[Any], bool]
    make_checker: Callable[[Any, int | None, str], Callable[[Any], None]] | None = None


def _tensor_to_numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, Tensor) else np.asarray(value)


def _not_handled(value: Any) -> Any:
    return NotImplemented


TENSOR_BRIDGE = Bridge(
    name="rlmesh",
    decode_leaf=lambda tensor: tensor,
    encode_leaf=_not_handled,
    from_numpy=lambda array: Tensor.from_numpy(array) if array.ndim else array.item(),
    to_numpy=_tensor_to_numpy,
    is_array=lambda value: isinstance(value, Tensor),
)

NUMPY_BRIDGE = Bridge(
    name="numpy",
    decode_leaf=Tensor.numpy,
    encode_leaf=_not_handled,
    from_numpy=lambda array: array if array.ndim else array[()],
    to_numpy=_tensor_to_numpy,
    is_array=lambda value: isinstance(value, np.ndarray),
)
