"""The NumPy backend: tensor leaves decode to writable NumPy arrays sharing the receive buffer.

Example:
    >>> import rlmesh.numpy as rn
    >>> with rn.RemoteEnv("tcp://127.0.0.1:5555") as env:  # doctest: +SKIP
    ...     obs, info = env.reset(seed=0)
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlmesh.backends import backend_class
from rlmesh.bridges import NUMPY_BRIDGE
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.models import ModelBase
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.sandbox.options import SandboxOptions
from rlmesh.spaces import Space
from rlmesh.spaces import space_from_spec as _space_from_spec
from rlmesh.specs import SpaceSpec

__all__ = [
    "Model",
    "NumpyValue",
    "RemoteEnv",
    "RemoteVectorEnv",
    "SandboxEnv",
    "SandboxOptions",
    "SandboxVectorEnv",
    "asarray",
    "space_from_spec",
]

NumpyValue = Any
"""A value tree whose tensor leaves are ``numpy.ndarray``."""


def space_from_spec(spec: SpaceSpec) -> Space[NumpyValue]:
    """A space that samples NumPy values and accepts NumPy values in ``contains``."""
    return _space_from_spec(spec, NUMPY_BRIDGE)


def asarray(tensor: Any) -> np.ndarray:
    """A NumPy view of an RLMesh tensor (no copy)."""
    return NUMPY_BRIDGE.decode_leaf(tensor)


@backend_class(NUMPY_BRIDGE, "Remote client for one environment; tensor leaves decode to NumPy arrays.")
class RemoteEnv(RemoteEnvBase[NumpyValue, NumpyValue]): ...


@backend_class(NUMPY_BRIDGE, "Remote client for a vector environment; batched values are NumPy arrays.")
class RemoteVectorEnv(RemoteVectorEnvBase[NumpyValue, NumpyValue]): ...


@backend_class(NUMPY_BRIDGE, "NumPy-backed model: ``predict`` receives NumPy observations.")
class Model(ModelBase[NumpyValue, NumpyValue]): ...


@backend_class(
    NUMPY_BRIDGE, "Owned sandbox session for one environment; its client is RemoteEnv.", client_class=RemoteEnv
)
class SandboxEnv(SandboxEnvBase[NumpyValue, NumpyValue]): ...


@backend_class(
    NUMPY_BRIDGE,
    "Owned sandbox session for a vector environment; its client is RemoteVectorEnv.",
    client_class=RemoteVectorEnv,
)
class SandboxVectorEnv(SandboxVectorEnvBase[NumpyValue, NumpyValue]): ...
