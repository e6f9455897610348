"""Leaf spaces: Box, Discrete, MultiBinary, MultiDiscrete, Text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.spaces.base import Space
from rlmesh.specs import (
    DEFAULT_CHARSET,
    BoxSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    TextSpec,
)
from rlmesh.tensor import wire_dtype


def _is_integer_scalar(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, int | np.integer):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "iu"


class Box(Space[Any]):
    """A box in R^n with per-element bounds (scalar or array ``low``/``high``)."""

    def __init__(
        self,
        low: Any,
        high: Any,
        shape: Sequence[int] | None = None,
        dtype: Any = np.float32,
        *,
        bridge: Bridge = TENSOR_BRIDGE,
        seed: int | None = None,
    ) -> None:
        dtype = wire_dtype(dtype)
        if shape is None:
            shape = np.shape(low) if np.ndim(low) else np.shape(high)
        shape = tuple(int(d) for d in shape)
        self.low = np.broadcast_to(np.asarray(low, dtype=dtype), shape).copy()
        self.high = np.broadcast_to(np.asarray(high, dtype=dtype), shape).copy()
        if np.any(self.low > self.high):
            raise ValueError(f"Box low must not exceed high; got low={low!r}, high={high!r}")
        spec = BoxSpec(shape, dtype.name, self.low, self.high)
        super().__init__(spec, bridge=bridge, seed=seed)

    def _sample_numpy(self) -> np.ndarray:
        dtype = self.dtype
        assert dtype is not None
        if dtype.kind == "b":
            return self._rng.integers(0, 2, size=self.shape).astype(bool)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            # Clip before casting: uint64 bounds do not fit in int64.
            low = np.maximum(self.low, max(info.min, -(2**62))).astype(np.int64)
            high = np.minimum(self.high, min(info.max, 2**62)).astype(np.int64)
            return self._rng.integers(low, high, endpoint=True, size=self.shape).astype(dtype)
        low, high = self.low.astype(np.float64), self.high.astype(np.float64)
        sample = np.empty(self.shape, dtype=np.float64)
        lo_ok, hi_ok = np.isfinite(low), np.isfinite(high)
        both, only_lo, only_hi, neither = lo_ok & hi_ok, lo_ok & ~hi_ok, ~lo_ok & hi_ok, ~lo_ok & ~hi_ok
        sample[both] = self._rng.uniform(low[both], high[both])
        sample[only_lo] = low[only_lo] + self._rng.exponential(size=only_lo.sum())
        sample[only_hi] = high[only_hi] - self._rng.exponential(size=only_hi.sum())
        sample[neither] = self._rng.normal(size=neither.sum())
        return np.clip(sample, low, high).astype(dtype)

    def __repr__(self) -> str:
        return f"Box({self.spec.low}, {self.spec.high}, {self.shape}, {self.spec.dtype})"


class Discrete(Space[Any]):
    """Integers ``start, ..., start + n - 1``."""

    def __init__(self, n: int, start: int = 0, *, bridge: Bridge = TENSOR_BRIDGE, seed: int | None = None):
        if not _is_integer_scalar(n) or int(n) <= 0:
            raise ValueError(f"Discrete n must be a positive integer, got {n!r}")
        self.n, self.start = int(n), int(start)
        super().__init__(DiscreteSpec(self.n, self.start), bridge=bridge, seed=seed)

    def sample(self) -> Any:
        """A random integer as the backend's 0-d value for arrays, here a Python int."""
        return self.bridge.from_numpy(np.asarray(self.start + int(self._rng.integers(self.n)), np.int64))

    def __repr__(self) -> str:
        return f"Discrete({self.n})" if not self.start else f"Discrete({self.n}, start={self.start})"


class MultiBinary(Space[Any]):
    """Binary arrays of a fixed shape."""

    def __init__(self, n: int | Sequence[int], *, bridge: Bridge = TENSOR_BRIDGE, seed: int | None = None):
        shape = (int(n),) if np.ndim(n) == 0 else tuple(int(d) for d in n)  # type: ignore[union-attr]
        super().__init__(MultiBinarySpec(shape), bridge=bridge, seed=seed)

    @property
    def n(self) -> int | tuple[int, ...]:
        """The shape, as gymnasium reports it."""
        return self.shape[0] if len(self.shape) == 1 else self.shape

    def _sample_numpy(self) -> np.ndarray:
        return self._rng.integers(0, 2, size=self.shape, dtype=np.int8)

    def __repr__(self) -> str:
        return f"MultiBinary({self.n})"


class MultiDiscrete(Space[Any]):
    """Arrays of integers, element ``i`` in ``start[i] .. start[i] + nvec[i] - 1``."""

    def __init__(
        self,
        nvec: Any,
        dtype: Any = np.int64,
        start: Any = None,
        *,
        bridge: Bridge = TENSOR_BRIDGE,
        seed: int | None = None,
    ):
        dtype = wire_dtype(dtype)
        self.nvec = np.asarray(nvec, dtype=dtype)
        if np.any(self.nvec <= 0):
            raise ValueError(f"MultiDiscrete nvec must be positive, got {nvec!r}")
        self.start = (
            np.zeros_like(self.nvec)
            if start is None
            else np.broadcast_to(np.asarray(start, dtype=dtype), self.nvec.shape).copy()
        )
        spec = MultiDiscreteSpec(self.nvec, self.start, dtype.name)
        super().__init__(spec, bridge=bridge, seed=seed)

    def _sample_numpy(self) -> np.ndarray:
        return (self.start + self._rng.integers(0, self.nvec, size=self.nvec.shape)).astype(self.nvec.dtype)

    def __repr__(self) -> str:
        return f"MultiDiscrete({self.nvec.tolist()})"


class Text(Space[str]):
    """Strings of ``min_length..max_length`` characters from ``charset``."""

    def __init__(
        self,
        max_length: int,
        *,
        min_length: int = 1,
        charset: str | Sequence[str] = DEFAULT_CHARSET,
        bridge: Bridge = TENSOR_BRIDGE,
        seed: int | None = None,
    ):
        if not 0 <= min_length <= max_length:
            raise ValueError(f"Text needs 0 <= min_length <= max_length, got {min_length}, {max_length}")
        self.min_length, self.max_length = int(min_length), int(max_length)
        self.charset = "".join(sorted(set(charset)))
        spec = TextSpec(self.max_length, self.min_length, self.charset)
        super().__init__(spec, bridge=bridge, seed=seed)

    def sample(self) -> str:
        """A random string."""
        length = int(self._rng.integers(self.min_length, self.max_length, endpoint=True))
        if not self.charset:
            return ""
        return "".join(self._rng.choice(list(self.charset), size=length))

    def __repr__(self) -> str:
        return f"Text({self.min_length}, {self.max_length})"
