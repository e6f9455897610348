"""The one check of reset and sampling seeds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_seed", "check_seeds", "is_seed"]


def is_seed(value: Any) -> bool:
    """Whether ``value`` is a valid seed: a non-negative integer (not a bool) or None."""
    if value is None:
        return True
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_) and value >= 0


def check_seed(value: Any, name: str = "seed") -> int | None:
    """``value`` as a Python int (or None).

    Raises:
        ValueError: ``value`` is not a non-negative integer or None, naming ``name``.
    """
    if not is_seed(value):
        raise ValueError(f"{name} must be a non-negative integer or None, got {value!r:.80}")
    return None if value is None else int(value)


def check_seeds(values: Any, name: str = "seeds") -> list[int | None]:
    """A list of seeds from a sequence of non-negative integers or None entries.

    Raises:
        TypeError: ``values`` is not a sequence (a string, a number...).
        ValueError: an entry is not a seed.
    """
    if values is None:
        return []
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | range | np.ndarray):
        raise TypeError(f"{name} must be a sequence of non-negative integers (or None entries), got {values!r:.80}")
    return [check_seed(value, f"{name} entry") for value in values]
