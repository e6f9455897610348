"""Experimental JAX backend: the shared rlmesh clients, with tensor leaves as JAX arrays.

Install it with ``pip install "rlmesh[jax]"`` (jax >= 0.4.24). Importing this module never
fails; constructing a client or calling a helper raises the ImportError from
:func:`ensure_available` when JAX is missing or too old.

Conversion semantics:

* :func:`asarray` imports a tensor over DLPack. XLA shares rlmesh's 64-byte-aligned buffers
  zero-copy (a decoded observation's ``unsafe_buffer_pointer()`` is the receive buffer) and
  copies otherwise; JAX arrays are immutable either way, so there is no mutation hazard.
* :func:`from_array` moves the array to the CPU if needed, blocks until it is ready and copies
  the elements into a fresh Tensor; 0-d arrays become Python primitives; bfloat16 is refused.
* int64, uint64 and float64 need ``jax.config.update("jax_enable_x64", True)``. Without it
  JAX itself demotes them: decoded observations and sampled values arrive as
  int32/uint32/float32 copies, and 64-bit values outside the 32-bit range wrap around.

Example:
    >>> import rlmesh.jax as rj
    >>> with rj.RemoteEnv("tcp://127.0.0.1:5555") as env:  # doctest: +SKIP
    ...     obs, info = env.reset(seed=0)          # obs is a jax.Array
    ...     obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
"""

from __future__ import annotations

from typing import Any, final

from rlmesh._jax_values import (
    JAX_BRIDGE,
    JaxValue,
    asarray,
    ensure_available,
    from_array,
    space_from_spec,
)
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.models import ModelBase
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.sandbox.options import SandboxOptions

__all__ = [
    "JAX_BRIDGE",
    "JaxValue",
    "Model",
    "RemoteEnv",
    "RemoteVectorEnv",
    "SandboxEnv",
    "SandboxOptions",
    "SandboxVectorEnv",
    "asarray",
    "ensure_available",
    "from_array",
    "space_from_spec",
]


class _RequiresJax:
    """Mixin: constructing the class raises the ensure_available ImportError without JAX."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        ensure_available()
        return super().__new__(cls)


@final
class RemoteEnv(_RequiresJax, RemoteEnvBase[JaxValue, JaxValue]):
    """Experimental JAX-backed remote client for one environment.

    Tensor leaves decode to JAX arrays while Python primitives and nested containers are
    preserved.

    Args:
        address: Endpoint address such as ``"tcp://127.0.0.1:5555"``.
        host: TCP host helper used when ``address`` is omitted.
        port: TCP port helper used when ``address`` is omitted.
        path: Unix socket path helper used when ``address`` is omitted.
        transport: Explicit transport selector.
    """

    bridge = JAX_BRIDGE


@final
class RemoteVectorEnv(_RequiresJax, RemoteVectorEnvBase[JaxValue, JaxValue]):
    """Experimental JAX-backed remote client for vectorized environments.

    Args:
        address: Endpoint address such as ``"tcp://127.0.0.1:5555"``.
        host: TCP host helper used when ``address`` is omitted.
        port: TCP port helper used when ``address`` is omitted.
        path: Unix socket path helper used when ``address`` is omitted.
        transport: Explicit transport selector.
    """

    bridge = JAX_BRIDGE


@final
class Model(_RequiresJax, ModelBase[JaxValue, JaxValue]):
    """Experimental JAX-backed model: predict works in JAX values.

    The JAX-typed ModelBase; see it for the source/spec construction and
    ``run(env, seeds=[...]) -> RunResult`` eval. ``predict_fn`` receives JAX-decoded
    observations.
    """

    bridge = JAX_BRIDGE


@final
class SandboxEnv(_RequiresJax, SandboxEnvBase[JaxValue, JaxValue]):
    """Experimental JAX-backed owned sandbox session for one environment.

    The owned sandbox client is :class:`rlmesh.jax.RemoteEnv`; see
    :class:`rlmesh.sandbox.env.SandboxEnvBase` for the parameters (``source``, ``base_image``,
    ``rlmesh_package``, ``packages``, ``imports``, ``trust_remote_code``,
    ``allow_unpinned_hf``, ``**gym_make_kwargs``).
    """

    client_class = RemoteEnv


@final
class SandboxVectorEnv(_RequiresJax, SandboxVectorEnvBase[JaxValue, JaxValue]):
    """Experimental JAX-backed owned sandbox session for vectorized environments.

    The owned sandbox client is :class:`rlmesh.jax.RemoteVectorEnv`; see
    :class:`rlmesh.sandbox.env.SandboxVectorEnvBase` for the parameters (``source``,
    ``num_envs``, ``vectorization_mode``, ``base_image``, ``rlmesh_package``, ``packages``,
    ``imports``, ``trust_remote_code``, ``allow_unpinned_hf``, ``**env_make_kwargs``).
    """

    client_class = RemoteVectorEnv
