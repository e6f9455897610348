"""Steps as fixed-layout records: no per-step encoding when every leaf's place is known.

When the action and observation spaces are plain arrays (Box, Discrete, MultiDiscrete,
MultiBinary), both ends know from the contract where each byte of a step goes. The client
writes the action's bytes at the start of the request area; the server writes the
observation's bytes at the start of the reply slot, and reward, terminated and truncated
(one value each, or one per lane) into the reply header area. Nothing is packed or parsed.

A step whose values do not have exactly the contract's dtypes and shapes (a Python float for
a float32 Box, an env returning float64 observations, a non-empty info, ...) and every other
request or reply (reset, errors) use the channel's encoded messages, so a caller sees the same
values either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from rlmesh.specs import BoxSpec, DiscreteSpec, EnvContract, MultiBinarySpec, MultiDiscreteSpec, SpaceSpec
from rlmesh.tensor import Tensor

_ARRAY_SPECS = (BoxSpec, DiscreteSpec, MultiBinarySpec, MultiDiscreteSpec)
_REWARD = np.dtype(np.float64)
_FLAG = np.dtype(np.bool_)


def _array_layout(spec: SpaceSpec, lanes: int | None) -> tuple[tuple[int, ...], np.dtype] | None:
    if not isinstance(spec, _ARRAY_SPECS) or spec.dtype is None:
        return None
    shape = tuple(spec.shape) if lanes is None else (lanes, *spec.shape)
    return shape, np.dtype(spec.dtype)


class StepRecord:
    """Where a step's values lie in a channel, for one contract.

    Build with :meth:`for_contract`, which returns None when a space is not a plain array.

    Attributes:
        lanes: The lane count of a vector endpoint, None for a single env.
        action_shape, action_dtype: The action (batched for a vector endpoint).
        observation_shape, observation_dtype: The observation (batched likewise).
        header_bytes: Bytes of the reply header area used: reward, terminated, truncated.
    """

    def __init__(self, lanes: int | None, action: tuple[Any, np.dtype], observation: tuple[Any, np.dtype]) -> None:
        self.lanes = lanes
        self.action_shape, self.action_dtype = action
        self.observation_shape, self.observation_dtype = observation
        self.action_bytes = math.prod(self.action_shape) * self.action_dtype.itemsize
        self.observation_bytes = math.prod(self.observation_shape) * self.observation_dtype.itemsize
        count = 1 if lanes is None else lanes
        self.header_bytes = count * (_REWARD.itemsize + 2)
        # A scalar Discrete action may arrive as a Python int: within these bounds it fits.
        scalar_int = lanes is None and self.action_shape == () and self.action_dtype.kind in "iu"
        self._int_range = (np.iinfo(self.action_dtype).min, np.iinfo(self.action_dtype).max) if scalar_int else None

    @classmethod
    def for_contract(cls, contract: EnvContract) -> StepRecord | None:
        """The record layout of ``contract``'s steps, or None when its spaces need encoding."""
        action = _array_layout(contract.action_space, contract.num_envs)
        observation = _array_layout(contract.observation_space, contract.num_envs)
        if action is None or observation is None:
            return None
        return cls(contract.num_envs, action, observation)

    def fits(self, request_bytes: int, header_bytes: int, slot_bytes: int) -> bool:
        """Whether records fit areas of these sizes."""
        return (
            self.action_bytes <= request_bytes
            and self.header_bytes <= header_bytes
            and self.observation_bytes <= slot_bytes
        )

    # -- client: the action -------------------------------------------------------------
    def encode_action(self, action: Any, encode_leaf: Callable[[Any], Any] | None = None) -> tuple[Any, bool] | None:
        """``(value to write, whether it is a scalar)``, or None when ``action`` must be encoded.

        Only values of the contract's shape whose dtype widens exactly into the contract's
        qualify (they are cast as they are written), and a scalar (a Python int, a NumPy
        scalar or 0-d array) reaches the server as a Python number, so the server checks the
        very numbers an encoded request would have carried.
        """
        kind = type(action)
        if kind is int:
            bounds = self._int_range
            return (action, True) if bounds is not None and bounds[0] <= action <= bounds[1] else None
        if kind is not np.ndarray and not isinstance(action, np.generic):
            encoded = NotImplemented if encode_leaf is None else encode_leaf(action)
            if type(encoded) is not Tensor:
                return None
            array = encoded.numpy()
            if array.shape == self.action_shape and self._widens(array.dtype):
                return array, False  # a backend array crosses as an array, even 0-d
            return None
        if action.shape == self.action_shape and self._widens(action.dtype):
            return action, action.ndim == 0
        return None

    def _widens(self, dtype: np.dtype) -> bool:
        """Whether values of ``dtype`` become the action dtype exactly (int32 into int64, ...).

        Same kind only: the server checks the very same numbers before casting them anyway.
        """
        target = self.action_dtype
        return dtype == target or (dtype.kind == target.kind and np.can_cast(dtype, target, "safe"))

    # -- server: the reply --------------------------------------------------------------
    def reply_values(self, payload: Any) -> tuple[np.ndarray, Any, Any, Any] | None:
        """Observation, reward, terminated and truncated of a step reply, or None to encode it."""
        if type(payload) is not list or len(payload) != 5:
            return None
        observation, reward, terminated, truncated, info = payload
        if type(info) is not dict or info:
            return None
        if (
            type(observation) is not np.ndarray
            or observation.dtype != self.observation_dtype
            or observation.shape != self.observation_shape
        ):
            return None
        if self.lanes is None:
            if type(reward) is not float or type(terminated) is not bool or type(truncated) is not bool:
                return None
            return observation, reward, terminated, truncated
        for value, dtype in ((reward, _REWARD), (terminated, _FLAG), (truncated, _FLAG)):
            if type(value) is not np.ndarray or value.dtype != dtype or value.shape != (self.lanes,):
                return None
        return observation, reward, terminated, truncated


__all__ = ["StepRecord"]
