"""Server-side action checks against the env's own Gymnasium space.

Actions arrive as NumPy arrays and Python values. Numeric arrays of the right kind are cast
to the space's dtype (a float64 action for a float32 Box is what a Gymnasium user would pass
locally), then the space's ``contains`` decides. Anything else is an
:class:`~rlmesh.errors.InvalidActionError` naming the action, the space and, for containers
and vector lanes, where the problem is.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlmesh.errors import InvalidActionError


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        body = np.array2string(value, threshold=8, edgeitems=2)
        return f"{body} (array shape={value.shape} dtype={value.dtype})"
    return repr(value)[:200]


def coerce(space: Any, value: Any, where: str = "action") -> Any:
    """Return ``value`` cast to ``space``'s dtype and checked for membership.

    Raises:
        InvalidActionError: naming ``where``, the value and the space.
    """
    import gymnasium.spaces as spaces

    if isinstance(space, spaces.Dict):
        if not isinstance(value, dict) or set(value) != set(space.spaces):
            raise InvalidActionError(
                f"{where} {_describe(value)} must be a dict with keys {sorted(space.spaces)} for {space}"
            )
        return {key: coerce(sub, value[key], f"{where}[{key!r}]") for key, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        if not isinstance(value, tuple | list) or len(value) != len(space.spaces):
            raise InvalidActionError(f"{where} {_describe(value)} must be a tuple of {len(space.spaces)} for {space}")
        return tuple(
            coerce(sub, item, f"{where}[{i}]") for i, (sub, item) in enumerate(zip(space.spaces, value, strict=True))
        )
    coerced = _cast(space, value)
    if not space.contains(coerced):
        raise InvalidActionError(f"{where} {_describe(value)} is not in the action space {space}")
    return coerced


def _cast(space: Any, value: Any) -> Any:
    import gymnasium.spaces as spaces

    if isinstance(space, spaces.Discrete):
        if isinstance(value, np.ndarray) and value.ndim == 0:
            value = value[()]
        if isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_):
            return np.int64(value)
        return value
    if isinstance(space, spaces.Text):
        return value
    if isinstance(value, list | int | float) and not isinstance(value, bool):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and space.dtype is not None and value.dtype != space.dtype:
        expected = space.dtype.kind
        if (expected == "f" and value.dtype.kind in "fiu") or (expected in "iu" and value.dtype.kind in "iu"):
            return value.astype(space.dtype)
    return value


def coerce_batch(batched_space: Any, single_space: Any, value: Any, num_envs: int) -> Any:
    """Cast and check a batch of ``num_envs`` actions; name the first bad lane on failure."""
    import gymnasium.spaces as spaces

    if isinstance(value, list | tuple) and not isinstance(batched_space, spaces.Tuple):
        if len(value) != num_envs:
            raise InvalidActionError(f"expected {num_envs} actions (one per lane), got {len(value)}")
        if all(isinstance(item, np.ndarray) for item in value) or isinstance(
            single_space, spaces.Box | spaces.Discrete | spaces.MultiDiscrete | spaces.MultiBinary
        ):
            try:
                value = np.stack([np.asarray(item) for item in value])
            except ValueError as error:
                raise InvalidActionError(f"actions {_describe(value)} are ragged: {error}") from None
    coerced = _cast_tree(batched_space, value)
    if batched_space.contains(coerced):
        return coerced
    _name_bad_lane(single_space, value, num_envs)
    raise InvalidActionError(f"actions {_describe(value)} are not in the batched action space {batched_space}")


def _cast_tree(space: Any, value: Any) -> Any:
    import gymnasium.spaces as spaces

    if isinstance(space, spaces.Dict) and isinstance(value, dict):
        return {k: _cast_tree(space.spaces[k], v) if k in space.spaces else v for k, v in value.items()}
    if isinstance(space, spaces.Tuple) and isinstance(value, tuple | list):
        return tuple(_cast_tree(s, v) for s, v in zip(space.spaces, value, strict=False))
    return _cast(space, value)


def _name_bad_lane(single_space: Any, value: Any, num_envs: int) -> None:
    from gymnasium.vector.utils import iterate

    try:
        lanes = list(iterate(single_space_batch(single_space, num_envs), value))
    except Exception:
        return
    if len(lanes) != num_envs:
        raise InvalidActionError(f"expected {num_envs} actions (one per lane), got {len(lanes)}")
    for lane, item in enumerate(lanes):
        coerce(single_space, item, f"action for lane {lane}")


def single_space_batch(single_space: Any, num_envs: int) -> Any:
    """Gymnasium's batched space of ``num_envs`` copies of ``single_space``."""
    from gymnasium.vector.utils import batch_space

    return batch_space(single_space, num_envs)
