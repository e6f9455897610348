"""The plain backend: tensor leaves stay :class:`~rlmesh.tensor.Tensor` values."""

from __future__ import annotations

from typing import Any

from rlmesh.backends import backend_class
from rlmesh.bridges import TENSOR_BRIDGE
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.models import ModelBase
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase

__all__ = ["Model", "RemoteEnv", "RemoteVectorEnv", "SandboxEnv", "SandboxVectorEnv", "Value"]

Value = Any
"""A value tree whose tensor leaves are :class:`~rlmesh.tensor.Tensor`."""


@backend_class(TENSOR_BRIDGE, "Remote client for one environment; tensor leaves decode to rlmesh Tensors.")
class RemoteEnv(RemoteEnvBase[Value, Value]): ...


@backend_class(TENSOR_BRIDGE, "Remote client for a vector environment; batched leaves decode to rlmesh Tensors.")
class RemoteVectorEnv(RemoteVectorEnvBase[Value, Value]): ...


@backend_class(TENSOR_BRIDGE, "A model of the plain backend: ``predict`` receives rlmesh Tensor leaves.")
class Model(ModelBase[Value, Value]): ...


@backend_class(
    TENSOR_BRIDGE, "Owned sandbox session for one environment; its client is RemoteEnv.", client_class=RemoteEnv
)
class SandboxEnv(SandboxEnvBase[Value, Value]): ...


@backend_class(
    TENSOR_BRIDGE,
    "Owned sandbox session for a vector environment; its client is RemoteVectorEnv.",
    client_class=RemoteVectorEnv,
)
class SandboxVectorEnv(SandboxVectorEnvBase[Value, Value]): ...
