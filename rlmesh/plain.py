"""The plain backend: tensor leaves stay :class:`~rlmesh.tensor.Tensor` values."""

from __future__ import annotations

from typing import Any, final

from rlmesh.bridges import TENSOR_BRIDGE
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase

Value = Any
"""A value tree whose tensor leaves are :class:`~rlmesh.tensor.Tensor`."""


@final
class RemoteEnv(RemoteEnvBase[Value, Value]):
    """Remote client for one environment; tensor leaves decode to :class:`Tensor`."""

    bridge = TENSOR_BRIDGE


@final
class RemoteVectorEnv(RemoteVectorEnvBase[Value, Value]):
    """Remote client for a vector environment; batched leaves decode to :class:`Tensor`."""

    bridge = TENSOR_BRIDGE


@final
class SandboxEnv(SandboxEnvBase[Value, Value]):
    """Owned sandbox session for one environment; its client is :class:`RemoteEnv`."""

    client_class = RemoteEnv


@final
class SandboxVectorEnv(SandboxVectorEnvBase[Value, Value]):
    """Owned sandbox session for a vector environment; its client is :class:`RemoteVectorEnv`."""

    client_class = RemoteVectorEnv
