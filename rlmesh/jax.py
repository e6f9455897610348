"""Experimental JAX backend: the shared rlmesh clients, with tensor leaves as JAX arrays.

Install it with ``pip install "rlmesh[jax]"`` (jax >= 0.4.24). Importing this module never
fails; constructing a client or calling a helper raises the ImportError from
:func:`ensure_available` when JAX is missing or too old.

Conversion semantics:

* :func:`asarray` imports a tensor without a copy (jaxlib's aliasing import, else DLPack).
  XLA shares rlmesh's 64-byte-aligned buffers zero-copy (a decoded observation's
  ``unsafe_buffer_pointer()`` is the receive buffer) and copies otherwise; JAX arrays are
  immutable either way, so there is no mutation hazard. Decoded arrays are uncommitted, like
  ``jnp.asarray`` of a NumPy array.
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

from typing import Any

from rlmesh._jax_bridge import JAX_BRIDGE, JaxValue, asarray, from_array
from rlmesh._jax_version import ensure_available
from rlmesh.backends import backend_class
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.models import ModelBase
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.sandbox.options import SandboxOptions
from rlmesh.spaces import Space
from rlmesh.spaces import space_from_spec as _space_from_spec
from rlmesh.specs import SpaceSpec

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


def space_from_spec(spec: SpaceSpec) -> Space[JaxValue]:
    """Create a JAX-adapted space wrapper for a native space spec.

    Args:
        spec: A :class:`rlmesh.specs.SpaceSpec` (or its dict form).

    Returns:
        A space whose ``sample()`` returns JAX arrays (seeded through ``space.seed``) and whose
        ``contains()`` accepts JAX arrays, NumPy arrays and Python values.

    Raises:
        ImportError: JAX is missing or too old (see :func:`ensure_available`).
    """
    ensure_available()
    return _space_from_spec(spec, bridge=JAX_BRIDGE)


def _jax_class(summary: str, **attributes: Any) -> Any:
    return backend_class(JAX_BRIDGE, f"Experimental JAX-backed {summary}", require=ensure_available, **attributes)


@_jax_class("remote client for one environment; tensor leaves decode to JAX arrays.")
class RemoteEnv(RemoteEnvBase[JaxValue, JaxValue]): ...


@_jax_class("remote client for vectorized environments; batched values are JAX arrays.")
class RemoteVectorEnv(RemoteVectorEnvBase[JaxValue, JaxValue]): ...


@_jax_class("model: ``predict_fn`` receives JAX-decoded observations.")
class Model(ModelBase[JaxValue, JaxValue]): ...


@_jax_class("owned sandbox session for one environment; its client is RemoteEnv.", client_class=RemoteEnv)
class SandboxEnv(SandboxEnvBase[JaxValue, JaxValue]): ...


@_jax_class(
    "owned sandbox session for vectorized environments; its client is RemoteVectorEnv.", client_class=RemoteVectorEnv
)
class SandboxVectorEnv(SandboxVectorEnvBase[JaxValue, JaxValue]): ...
