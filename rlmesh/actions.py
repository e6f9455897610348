"""Server-side actions: the shared contract check, then a cast to the env's own dtypes.

Actions arrive as NumPy arrays and Python values. The compiled checker of the action spec
(:mod:`rlmesh.checks`, the same one clients and models use) refuses anything outside the
space with an :class:`~rlmesh.errors.InvalidActionError` naming the leaf, the lane, what was
expected and what was found. Accepted numeric values are then cast to the space's dtype (a
float64 action for a float32 Box is what a Gymnasium user would pass locally).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from rlmesh.checks import make_action_checker
from rlmesh.errors import InvalidActionError
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

__all__ = ["ActionGate"]

_ARRAY_SPECS = (BoxSpec, DiscreteSpec, MultiDiscreteSpec, MultiBinarySpec)


class ActionGate:
    """Check and cast the actions of one endpoint (single or ``num_envs`` lanes).

    Args:
        spec: The action spec of one lane.
        num_envs: None for a single env; the lane count of a vector env.
    """

    def __init__(self, spec: SpaceSpec, num_envs: int | None = None) -> None:
        self._check = make_action_checker(spec, num_envs=num_envs)
        self._num_envs = num_envs
        self._spec = spec
        if isinstance(spec, DiscreteSpec) and num_envs is None:
            self._cast = functools.partial(_discrete_scalar, np.dtype(spec.dtype).type)  # dtype bound once
        else:
            self._cast = functools.partial(_cast.dispatch(type(spec)), spec, num_envs is not None)
        self._stacks_lists = num_envs is not None and isinstance(spec, _ARRAY_SPECS)

    def __call__(self, action: Any) -> Any:
        """``action`` checked and cast to the space's dtypes.

        Raises:
            InvalidActionError: the action is not in the space (or not one per lane).
        """
        if self._num_envs is not None and isinstance(action, list | tuple) and not isinstance(self._spec, TupleSpec):
            action = self._lanes(action)
        self._check(action)
        return self._cast(action)

    def _lanes(self, actions: list[Any] | tuple[Any, ...]) -> Any:
        """A list with one action per lane, stacked where the lanes are arrays."""
        if len(actions) != self._num_envs:
            raise InvalidActionError(f"expected {self._num_envs} actions (one per lane), got {len(actions)}")
        if not (self._stacks_lists or all(isinstance(item, np.ndarray) for item in actions)):
            return actions
        try:
            return np.stack([np.asarray(item) for item in actions])
        except ValueError as error:
            raise InvalidActionError(f"actions {actions!r:.200} are ragged: {error}") from None


def _discrete_scalar(scalar: type, value: Any) -> Any:
    """A single Discrete action as a NumPy integer of the space's dtype (``scalar``)."""
    return scalar(value if type(value) is int else value.item() if isinstance(value, _NUMPY_VALUES) else value)


_NUMPY_VALUES = (np.ndarray, np.generic)


@functools.singledispatch
def _cast(spec: SpaceSpec, batched: bool, value: Any) -> Any:
    """A checked value of ``spec`` with numeric leaves in the space's dtype."""
    dtype = np.dtype(spec.dtype)
    if not isinstance(value, np.ndarray):
        value = np.asarray(value)
    return value if value.dtype == dtype else value.astype(dtype)


@_cast.register
def _(spec: DiscreteSpec, batched: bool, value: Any) -> Any:
    dtype = np.dtype(spec.dtype)
    if batched:
        value = np.asarray(value)
        return value if value.dtype == dtype else value.astype(dtype)
    return _discrete_scalar(dtype.type, value)


@_cast.register
def _(spec: TextSpec, batched: bool, value: Any) -> Any:
    return tuple(value) if batched else value


@_cast.register
def _(spec: DictSpec, batched: bool, value: Any) -> Any:
    return {key: _cast(sub, batched, value[key]) for key, sub in spec.spaces.items()}


@_cast.register
def _(spec: TupleSpec, batched: bool, value: Any) -> Any:
    return tuple(_cast(sub, batched, item) for sub, item in zip(spec.spaces, value, strict=True))
