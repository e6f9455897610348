"""Conversion between ``gymnasium.spaces`` and rlmesh specs (needs the gymnasium extra)."""

from __future__ import annotations

from typing import Any

import numpy as np

from rlmesh.errors import missing_extra
from rlmesh.spaces.simple import compact_bound
from rlmesh.specs import SpaceSpec
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
        dtype = _space_dtype(space)
        return SpaceSpec(
            "box", space.shape, dtype, {"low": compact_bound(space.low), "high": compact_bound(space.high)}
        )
    if isinstance(space, spaces.Discrete):
        return SpaceSpec("discrete", (), _space_dtype(space), {"n": int(space.n), "start": int(space.start)})
    if isinstance(space, spaces.MultiBinary):
        return SpaceSpec("multi_binary", space.shape, _space_dtype(space))
    if isinstance(space, spaces.MultiDiscrete):
        details = {"nvec": space.nvec.tolist(), "start": space.start.tolist()}
        return SpaceSpec("multi_discrete", space.shape, _space_dtype(space), details)
    if isinstance(space, spaces.Text):
        details = {
            "min_length": int(space.min_length),
            "max_length": int(space.max_length),
            "charset": "".join(sorted(space.character_set)),
        }
        return SpaceSpec("text", (), None, details)
    if isinstance(space, spaces.Dict):
        return SpaceSpec(
            "dict", (), None, {"spaces": {str(k): spec_from_gymnasium_space(v) for k, v in space.spaces.items()}}
        )
    if isinstance(space, spaces.Tuple):
        return SpaceSpec("tuple", (), None, {"spaces": [spec_from_gymnasium_space(v) for v in space.spaces]})
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
    spaces = _gymnasium_spaces()
    spec: SpaceSpec = getattr(spec_or_space, "spec", spec_or_space)
    d = spec.details
    if spec.kind == "box":
        dtype = np.dtype(spec.dtype)
        low, high = (np.broadcast_to(np.asarray(d[key], dtype), spec.shape) for key in ("low", "high"))
        return spaces.Box(low, high, shape=spec.shape, dtype=dtype)
    if spec.kind == "discrete":
        return spaces.Discrete(d["n"], start=d.get("start", 0), dtype=np.dtype(spec.dtype or "int64"))
    if spec.kind == "multi_binary":
        return spaces.MultiBinary(list(spec.shape))
    if spec.kind == "multi_discrete":
        return spaces.MultiDiscrete(
            np.asarray(d["nvec"]), dtype=np.dtype(spec.dtype), start=np.asarray(d.get("start", 0))
        )
    if spec.kind == "text":
        return spaces.Text(d["max_length"], min_length=d["min_length"], charset=d["charset"])
    if spec.kind == "dict":
        return spaces.Dict({k: to_gymnasium_space(v) for k, v in d["spaces"].items()})
    return spaces.Tuple([to_gymnasium_space(v) for v in d["spaces"]])
