"""Lane bookkeeping for one vector env joined from several endpoints (NumPy in, NumPy out).

Each endpoint serves a contiguous range of lanes: a vector endpoint ``count`` lanes, a
single-env endpoint one lane (``count`` None). These helpers cut a batched action into the
parts each endpoint takes and join the parts of a reply back into batched values, the way
Gymnasium's ``SyncVectorEnv`` batches them (infos with ``_key`` masks included).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rlmesh.specs import DictSpec, SpaceSpec, TextSpec, TupleSpec
from rlmesh.tensor import Tensor, aligned_empty

Part = tuple[Any, int | None]
"""One endpoint's share of a batched value: ``(value, count)``; count None for a single env."""


def take(spec: SpaceSpec, batch: Any, start: int, count: int | None, to_numpy: Callable[[Any], Any]) -> Any:
    """The lanes ``start .. start + count`` of a batched action (lane ``start`` alone when count is None).

    Args:
        spec: The single-lane action spec.
        batch: A batched action tree (arrays with a leading lane axis), or a list with one
            action per lane.
        start: The first lane.
        count: How many lanes; None takes lane ``start`` unbatched, for a single-env endpoint.
        to_numpy: The backend's array-to-NumPy conversion.
    """
    index: Any = start if count is None else slice(start, start + count)
    if isinstance(batch, list | tuple) and not isinstance(spec, TupleSpec):
        return batch[index] if count is None else list(batch[index])
    return _take(spec, batch, index, to_numpy)


@functools.singledispatch
def _take(spec: SpaceSpec, batch: Any, index: Any, to_numpy: Callable[[Any], Any]) -> Any:
    return np.asarray(to_numpy(batch))[index]


@_take.register
def _(spec: DictSpec, batch: Any, index: Any, to_numpy: Callable[[Any], Any]) -> Any:
    if not isinstance(batch, dict):
        return np.asarray(to_numpy(batch))[index]
    return {k: _take(spec.spaces[k], v, index, to_numpy) if k in spec.spaces else v for k, v in batch.items()}


@_take.register
def _(spec: TupleSpec, batch: Any, index: Any, to_numpy: Callable[[Any], Any]) -> Any:
    if not isinstance(batch, list | tuple):
        return np.asarray(to_numpy(batch))[index]
    return tuple(_take(s, v, index, to_numpy) for s, v in zip(spec.spaces, batch, strict=False))


@_take.register
def _(spec: TextSpec, batch: Any, index: Any, to_numpy: Callable[[Any], Any]) -> Any:
    if not isinstance(batch, list | tuple):
        return np.asarray(to_numpy(batch))[index]
    return batch[index] if isinstance(index, int) else tuple(batch[index])


def join(spec: SpaceSpec, parts: Sequence[Part]) -> Any:
    """Concatenate per-endpoint observations into one batch (arrays are 64-byte aligned).

    Args:
        spec: The single-lane observation spec.
        parts: Each endpoint's observations in lane order.
    """
    return _join(spec, parts)


@functools.singledispatch
def _join(spec: SpaceSpec, parts: Sequence[Part]) -> Any:
    return join_arrays(parts, spec.dtype, spec.shape)


@_join.register
def _(spec: DictSpec, parts: Sequence[Part]) -> Any:
    return {k: _join(child, [(value[k], count) for value, count in parts]) for k, child in spec.spaces.items()}


@_join.register
def _(spec: TupleSpec, parts: Sequence[Part]) -> Any:
    return tuple(_join(child, [(value[i], count) for value, count in parts]) for i, child in enumerate(spec.spaces))


@_join.register
def _(spec: TextSpec, parts: Sequence[Part]) -> Any:
    return tuple(item for value, count in parts for item in (value if count is not None else (value,)))


def join_arrays(parts: Sequence[Part], dtype: Any, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Concatenate per-endpoint arrays (or scalars of single envs) into one aligned array."""
    total = sum(1 if count is None else count for _, count in parts)
    out = aligned_empty((total, *shape), dtype)
    lane = 0
    for value, count in parts:
        if count is None:
            out[lane] = value
            lane += 1
        else:
            out[lane : lane + count] = value
            lane += count
    return out


def merge_infos(parts: Sequence[Part], num_envs: int) -> dict[str, Any]:
    """Join per-endpoint infos into one vector info dict with ``_key`` masks, as Gymnasium does.

    A vector endpoint's info is already batched over its lanes; a single env's is one plain dict.
    """
    merged: dict[str, Any] = {}
    lane = 0
    for info, count in parts:
        if count is None:
            _add_single(merged, info, lane, num_envs)
            lane += 1
        else:
            _add_batched(merged, info, lane, count, num_envs)
            lane += count
    return merged


def _new_array(value: Any, num_envs: int) -> np.ndarray:
    if type(value) in (int, float, bool) or isinstance(value, np.number):
        return np.zeros(num_envs, dtype=type(value))
    if isinstance(value, np.ndarray):
        return np.zeros((num_envs, *value.shape), dtype=value.dtype)
    return np.full(num_envs, None, dtype=object)


def _add_single(merged: dict[str, Any], info: dict[str, Any], lane: int, num_envs: int) -> None:
    for key, value in info.items():
        if isinstance(value, dict):
            array = merged.get(key, {})
            _add_single(array, value, lane, num_envs)
        else:
            array = merged[key] if key in merged else _new_array(value, num_envs)
            array[lane] = value
        mask = merged.get(f"_{key}", np.zeros(num_envs, dtype=np.bool_))
        mask[lane] = True
        merged[key], merged[f"_{key}"] = array, mask


def _add_batched(merged: dict[str, Any], info: dict[str, Any], start: int, count: int, num_envs: int) -> None:
    lanes = slice(start, start + count)
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue  # a mask, copied with its key below
        if isinstance(value, dict):
            array = merged.get(key, {})
            _add_batched(array, value, start, count, num_envs)
        else:
            value = np.asarray(value)
            if key not in merged:
                merged[key] = (
                    np.full(num_envs, None, dtype=object)
                    if value.dtype == object
                    else np.zeros((num_envs, *value.shape[1:]), dtype=value.dtype)
                )
            array = merged[key]
            array[lanes] = value
        mask = merged.get(f"_{key}", np.zeros(num_envs, dtype=np.bool_))
        mask[lanes] = info.get(f"_{key}", True)
        merged[key], merged[f"_{key}"] = array, mask


def to_backend(tree: Any, decode_leaf: Callable[[Tensor], Any]) -> Any:
    """Turn the numeric NumPy leaves of a joined tree into backend values (zero-copy when aligned)."""
    if isinstance(tree, dict):
        return {k: to_backend(v, decode_leaf) for k, v in tree.items()}
    if isinstance(tree, tuple):
        return tuple(to_backend(v, decode_leaf) for v in tree)
    if isinstance(tree, np.ndarray) and tree.dtype.kind in "biuf" and tree.ndim:
        return decode_leaf(Tensor(tree, _owned=True))
    return tree


__all__ = ["join", "join_arrays", "merge_infos", "take", "to_backend"]
