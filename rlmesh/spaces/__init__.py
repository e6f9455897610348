"""Spaces in the client's values: sample and contains in the backend's arrays.

``space_from_spec(spec, bridge=...)`` turns a handshake spec into a space whose sampled
array leaves are what the bridge makes of them (Tensors, NumPy arrays or JAX arrays).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.spaces.base import Space
from rlmesh.spaces.composite import Dict, Tuple
from rlmesh.spaces.gymnasium_bridge import spec_from_gymnasium_space, to_gymnasium_space
from rlmesh.spaces.simple import Box, Discrete, MultiBinary, MultiDiscrete, Text, compact_bound
from rlmesh.specs import SpaceSpec

__all__ = [
    "Box",
    "Dict",
    "Discrete",
    "MultiBinary",
    "MultiDiscrete",
    "Space",
    "Text",
    "Tuple",
    "batch_spec",
    "from_gymnasium_space",
    "space_from_spec",
    "spec_from_gymnasium_space",
    "to_gymnasium_space",
]


def space_from_spec(spec: SpaceSpec, bridge: Bridge = TENSOR_BRIDGE, *, seed: int | None = None) -> Space[Any]:
    """Build the rlmesh space described by ``spec``, sampling into ``bridge``'s values."""
    if isinstance(spec, dict):
        spec = SpaceSpec.from_dict(spec)
    d = spec.details
    if spec.kind == "box":
        space: Space[Any] = Box(np.asarray(d["low"]), np.asarray(d["high"]), spec.shape, spec.dtype, bridge=bridge)
    elif spec.kind == "discrete":
        space = Discrete(d["n"], d.get("start", 0), bridge=bridge)
    elif spec.kind == "multi_binary":
        space = MultiBinary(spec.shape, bridge=bridge)
    elif spec.kind == "multi_discrete":
        space = MultiDiscrete(np.asarray(d["nvec"]), spec.dtype, d.get("start"), bridge=bridge)
    elif spec.kind == "text":
        space = Text(d["max_length"], min_length=d["min_length"], charset=d["charset"], bridge=bridge)
    elif spec.kind == "dict":
        space = Dict({k: space_from_spec(v, bridge) for k, v in d["spaces"].items()}, bridge=bridge)
    else:
        space = Tuple([space_from_spec(v, bridge) for v in d["spaces"]], bridge=bridge)
    if seed is not None:
        space.seed(seed)
    return space


def from_gymnasium_space(space: Any, bridge: Bridge = TENSOR_BRIDGE) -> Space[Any]:
    """The rlmesh space equivalent to a ``gymnasium.spaces`` space."""
    return space_from_spec(spec_from_gymnasium_space(space), bridge)


def batch_spec(spec: SpaceSpec, num_envs: int) -> SpaceSpec:
    """The spec of ``num_envs`` stacked values, following ``gymnasium.vector.utils.batch_space``."""
    d = spec.details
    if spec.kind == "box":
        details = {
            k: compact_bound(np.stack([np.broadcast_to(np.asarray(d[k]), spec.shape)] * num_envs))
            for k in ("low", "high")
        }
        return SpaceSpec("box", (num_envs, *spec.shape), spec.dtype, details)
    if spec.kind == "discrete":
        details = {"nvec": [d["n"]] * num_envs, "start": [d.get("start", 0)] * num_envs}
        return SpaceSpec("multi_discrete", (num_envs,), spec.dtype, details)
    if spec.kind == "multi_binary":
        return SpaceSpec("box", (num_envs, *spec.shape), spec.dtype, {"low": 0, "high": 1})
    if spec.kind == "multi_discrete":
        details = {"nvec": [d["nvec"]] * num_envs, "start": [d.get("start", 0)] * num_envs}
        return SpaceSpec("multi_discrete", (num_envs, *spec.shape), spec.dtype, details)
    if spec.kind == "text":
        return SpaceSpec("tuple", (), None, {"spaces": [spec] * num_envs})
    if spec.kind == "dict":
        return SpaceSpec("dict", (), None, {"spaces": {k: batch_spec(v, num_envs) for k, v in d["spaces"].items()}})
    return SpaceSpec("tuple", (), None, {"spaces": [batch_spec(v, num_envs) for v in d["spaces"]]})
