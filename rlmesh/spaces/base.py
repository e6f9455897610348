"""The Space base class: a spec, a seeded generator, and a bridge for sampled leaves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.checks import make_observation_checker
from rlmesh.seeding import check_seed
from rlmesh.specs import SpaceSpec

T = TypeVar("T")


class Space(Generic[T]):
    """A space whose samples and members are values of one backend.

    Subclasses implement ``_sample_numpy`` (a NumPy or Python value); membership is the
    space's compiled contract check. The bridge decides what sampled array leaves become.
    """

    def __init__(self, spec: SpaceSpec, *, bridge: Bridge = TENSOR_BRIDGE, seed: int | None = None):
        self._spec = spec
        self.bridge = bridge
        self._rng = np.random.default_rng(seed)
        self._check: Callable[[Any], None] | None = None

    @property
    def spec(self) -> SpaceSpec:
        """The plain-data description of this space."""
        return self._spec

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one value."""
        return self._spec.shape

    @property
    def dtype(self) -> np.dtype | None:
        """NumPy dtype of the values, None for Text and containers."""
        return None if self._spec.dtype is None else np.dtype(self._spec.dtype)

    @property
    def np_random(self) -> np.random.Generator:
        """The generator behind :meth:`sample`."""
        return self._rng

    def seed(self, seed: int | None = None) -> int:
        """Reseed sampling; returns the seed used (a fresh one when ``seed`` is None)."""
        seed = check_seed(seed)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1, np.uint32)[0])
        self._rng = np.random.default_rng(seed)
        return seed

    def sample(self) -> T:
        """A random member of the space, in the bridge's values."""
        value = self._sample_numpy()
        return self.bridge.from_numpy(value) if isinstance(value, np.ndarray) else value

    def contains(self, value: Any) -> bool:
        """Whether ``value`` (backend array, NumPy array or Python value) is in the space."""
        check = self._check
        if check is None:
            check = self._check = make_observation_checker(self._spec)
        try:
            check(value)
        except (TypeError, ValueError):
            return False
        return True

    def __contains__(self, value: Any) -> bool:
        return self.contains(value)

    def to_gymnasium_space(self) -> Any:
        """The equivalent ``gymnasium.spaces`` space (needs the ``gymnasium`` extra)."""
        from rlmesh.spaces.gymnasium_bridge import to_gymnasium_space

        return to_gymnasium_space(self._spec)

    def _sample_numpy(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self._spec)
