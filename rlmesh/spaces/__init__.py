"""Spaces in the client's values: sample and contains in the backend's arrays.

``space_from_spec(spec, bridge=...)`` turns a handshake spec into a space whose sampled
array leaves are what the bridge makes of them (Tensors, NumPy arrays or JAX arrays).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.spaces.base import Space
from rlmesh.spaces.composite import Dict, Tuple
from rlmesh.spaces.gymnasium_bridge import spec_from_gymnasium_space, to_gymnasium_space
from rlmesh.spaces.simple import Box, Discrete, MultiBinary, MultiDiscrete, Text
from rlmesh.specs import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    SpaceSpec,
    TextSpec,
    TupleSpec,
)

__all__ = [
    "Box",
    "Dict",
    "Discrete",
    "MultiBinary",
    "MultiDiscrete",
    "Space",
    "Text",
    "Tuple",
    "batch_spec",
    "from_gymnasium_space",
    "space_from_spec",
    "spec_from_gymnasium_space",
    "to_gymnasium_space",
]


def space_from_spec(spec: SpaceSpec, bridge: Bridge = TENSOR_BRIDGE, *, seed: int | None = None) -> Space[Any]:
    """Build the rlmesh space described by ``spec`` (or its dict form), sampling into ``bridge``'s values."""
    if isinstance(spec, Mapping):
        spec = SpaceSpec.from_dict(spec)
    space = _build(spec, bridge)
    if seed is not None:
        space.seed(seed)
    return space


@functools.singledispatch
def _build(spec: SpaceSpec, bridge: Bridge) -> Space[Any]:
    raise TypeError(f"expected a SpaceSpec, got {type(spec).__name__} {spec!r:.80}")


@_build.register
def _(spec: BoxSpec, bridge: Bridge) -> Space[Any]:
    return Box(np.asarray(spec.low), np.asarray(spec.high), spec.shape, spec.dtype, bridge=bridge)


@_build.register
def _(spec: DiscreteSpec, bridge: Bridge) -> Space[Any]:
    return Discrete(spec.n, spec.start, bridge=bridge)


@_build.register
def _(spec: MultiBinarySpec, bridge: Bridge) -> Space[Any]:
    return MultiBinary(spec.shape, bridge=bridge)


@_build.register
def _(spec: MultiDiscreteSpec, bridge: Bridge) -> Space[Any]:
    return MultiDiscrete(np.asarray(spec.nvec), spec.dtype, spec.start, bridge=bridge)


@_build.register
def _(spec: TextSpec, bridge: Bridge) -> Space[Any]:
    return Text(spec.max_length, min_length=spec.min_length, charset=spec.charset, bridge=bridge)


@_build.register
def _(spec: DictSpec, bridge: Bridge) -> Space[Any]:
    return Dict({key: _build(sub, bridge) for key, sub in spec.spaces.items()}, bridge=bridge)


@_build.register
def _(spec: TupleSpec, bridge: Bridge) -> Space[Any]:
    return Tuple([_build(sub, bridge) for sub in spec.spaces], bridge=bridge)


def from_gymnasium_space(space: Any, bridge: Bridge = TENSOR_BRIDGE) -> Space[Any]:
    """The rlmesh space equivalent to a ``gymnasium.spaces`` space."""
    return space_from_spec(spec_from_gymnasium_space(space), bridge)


@functools.singledispatch
def batch_spec(spec: SpaceSpec, num_envs: int) -> SpaceSpec:
    """The spec of ``num_envs`` stacked values, following ``gymnasium.vector.utils.batch_space``."""
    raise TypeError(f"expected a SpaceSpec, got {type(spec).__name__} {spec!r:.80}")


@batch_spec.register
def _(spec: BoxSpec, num_envs: int) -> SpaceSpec:
    low, high = (np.stack([np.broadcast_to(np.asarray(b), spec.shape)] * num_envs) for b in (spec.low, spec.high))
    return BoxSpec((num_envs, *spec.shape), spec.dtype, low, high)


@batch_spec.register
def _(spec: DiscreteSpec, num_envs: int) -> SpaceSpec:
    return MultiDiscreteSpec([spec.n] * num_envs, [spec.start] * num_envs, spec.dtype)


@batch_spec.register
def _(spec: MultiBinarySpec, num_envs: int) -> SpaceSpec:
    return BoxSpec((num_envs, *spec.shape), spec.dtype, 0, 1)


@batch_spec.register
def _(spec: MultiDiscreteSpec, num_envs: int) -> SpaceSpec:
    return MultiDiscreteSpec([spec.nvec] * num_envs, [spec.start] * num_envs, spec.dtype)


@batch_spec.register
def _(spec: TextSpec, num_envs: int) -> SpaceSpec:
    return TupleSpec([spec] * num_envs)


@batch_spec.register
def _(spec: DictSpec, num_envs: int) -> SpaceSpec:
    return DictSpec({key: batch_spec(sub, num_envs) for key, sub in spec.spaces.items()})


@batch_spec.register
def _(spec: TupleSpec, num_envs: int) -> SpaceSpec:
    return TupleSpec([batch_spec(sub, num_envs) for sub in spec.spaces])
