"""Container spaces: Dict and Tuple."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.spaces.base import Space
from rlmesh.specs import DictSpec, TupleSpec


class Dict(Space[dict[str, Any]]):
    """A mapping of names to subspaces; samples are dicts in key order."""

    def __init__(self, spaces: Mapping[str, Space[Any]], *, bridge: Bridge = TENSOR_BRIDGE, seed: int | None = None):
        self.spaces = dict(spaces)
        for key in self.spaces:
            if not isinstance(key, str):
                raise ValueError(f"Dict space keys must be strings, got {key!r}")
        spec = DictSpec({k: s.spec for k, s in self.spaces.items()})
        super().__init__(spec, bridge=bridge, seed=seed)
        if seed is not None:
            self.seed(seed)

    def seed(self, seed: int | None = None) -> int:
        """Reseed this space and, from it, every subspace; returns the seed used."""
        used = super().seed(seed)
        for sub, sub_seed in zip(self.spaces.values(), self._rng.integers(2**31, size=len(self.spaces)), strict=True):
            sub.seed(int(sub_seed))
        return used

    def sample(self) -> dict[str, Any]:
        """A dict with one sample per subspace."""
        return {key: space.sample() for key, space in self.spaces.items()}

    def __getitem__(self, key: str) -> Space[Any]:
        return self.spaces[key]

    def __repr__(self) -> str:
        return "Dict(" + ", ".join(f"{k!r}: {v}" for k, v in self.spaces.items()) + ")"


class Tuple(Space[tuple[Any, ...]]):
    """A fixed-length tuple of subspaces; samples are tuples."""

    def __init__(self, spaces: Sequence[Space[Any]], *, bridge: Bridge = TENSOR_BRIDGE, seed: int | None = None):
        self.spaces = tuple(spaces)
        super().__init__(TupleSpec([s.spec for s in self.spaces]), bridge=bridge, seed=seed)
        if seed is not None:
            self.seed(seed)

    def seed(self, seed: int | None = None) -> int:
        """Reseed this space and, from it, every subspace; returns the seed used."""
        used = super().seed(seed)
        for sub, sub_seed in zip(self.spaces, self._rng.integers(2**31, size=len(self.spaces)), strict=True):
            sub.seed(int(sub_seed))
        return used

    def sample(self) -> tuple[Any, ...]:
        """A tuple with one sample per subspace."""
        return tuple(space.sample() for space in self.spaces)

    def __getitem__(self, index: int) -> Space[Any]:
        return self.spaces[index]

    def __len__(self) -> int:
        return len(self.spaces)

    def __repr__(self) -> str:
        return "Tuple(" + ", ".join(map(repr, self.spaces)) + ")"
