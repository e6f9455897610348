"""Conversion between ``gymnasium.spaces`` and rlmesh specs (needs the gymnasium extra)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from rlmesh.errors import missing_extra
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
from rlmesh.tensor import wire_dtype


def _gymnasium_spaces() -> Any:
    try:
        import gymnasium.spaces as spaces
    except ImportError as error:
        raise missing_extra("gymnasium", "gymnasium") from error
    return spaces


def spec_from_gymnasium_space(space: Any) -> SpaceSpec:
    """Describe a Gymnasium space as a :class:`SpaceSpec`.

    Raises:
        ValueError: for spaces that cannot cross the wire (Graph, Sequence, OneOf, custom
            spaces, or unsupported dtypes), naming the space.
    """
    spaces = _gymnasium_spaces()
    if isinstance(space, spaces.Box):
        return BoxSpec(space.shape, _space_dtype(space), space.low, space.high)
    if isinstance(space, spaces.Discrete):
        return DiscreteSpec(int(space.n), int(space.start), _space_dtype(space))
    if isinstance(space, spaces.MultiBinary):
        return MultiBinarySpec(space.shape, _space_dtype(space))
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteSpec(space.nvec, space.start, _space_dtype(space))
    if isinstance(space, spaces.Text):
        return TextSpec(int(space.max_length), int(space.min_length), "".join(sorted(space.character_set)))
    if isinstance(space, spaces.Dict):
        return DictSpec({str(k): spec_from_gymnasium_space(v) for k, v in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return TupleSpec([spec_from_gymnasium_space(v) for v in space.spaces])
    raise ValueError(
        f"{type(space).__name__} spaces ({space}) cannot be served by rlmesh; supported: Box, "
        "Discrete, MultiBinary, MultiDiscrete, Text, Dict, Tuple (wrap the env to flatten it)"
    )


def _space_dtype(space: Any) -> str:
    try:
        return wire_dtype(space.dtype).name
    except ValueError as error:
        raise ValueError(f"space {space} has dtype {space.dtype}, which cannot cross the wire: {error}") from None


def to_gymnasium_space(spec_or_space: Any) -> Any:
    """Build the ``gymnasium.spaces`` space for a :class:`SpaceSpec` or an rlmesh space."""
    spec = getattr(spec_or_space, "spec", spec_or_space)
    return _to_gymnasium(spec, _gymnasium_spaces())


@functools.singledispatch
def _to_gymnasium(spec: SpaceSpec, spaces: Any) -> Any:
    raise TypeError(f"expected a SpaceSpec or an rlmesh space, got {type(spec).__name__} {spec!r:.80}")


@_to_gymnasium.register
def _(spec: BoxSpec, spaces: Any) -> Any:
    dtype = np.dtype(spec.dtype)
    low, high = (np.broadcast_to(np.asarray(bound, dtype), spec.shape) for bound in (spec.low, spec.high))
    return spaces.Box(low, high, shape=spec.shape, dtype=dtype)


@_to_gymnasium.register
def _(spec: DiscreteSpec, spaces: Any) -> Any:
    return spaces.Discrete(spec.n, start=spec.start, dtype=np.dtype(spec.dtype))


@_to_gymnasium.register
def _(spec: MultiBinarySpec, spaces: Any) -> Any:
    return spaces.MultiBinary(list(spec.shape))


@_to_gymnasium.register
def _(spec: MultiDiscreteSpec, spaces: Any) -> Any:
    return spaces.MultiDiscrete(np.asarray(spec.nvec), dtype=np.dtype(spec.dtype), start=np.asarray(spec.start))


@_to_gymnasium.register
def _(spec: TextSpec, spaces: Any) -> Any:
    return spaces.Text(spec.max_length, min_length=spec.min_length, charset=spec.charset)


@_to_gymnasium.register
def _(spec: DictSpec, spaces: Any) -> Any:
    return spaces.Dict({key: _to_gymnasium(sub, spaces) for key, sub in spec.spaces.items()})


@_to_gymnasium.register
def _(spec: TupleSpec, spaces: Any) -> Any:
    return spaces.Tuple([_to_gymnasium(sub, spaces) for sub in spec.spaces])
