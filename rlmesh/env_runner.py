"""Server side of one served environment: its contract, checked actions, and the ops."""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from rlmesh.actions import ActionGate
from rlmesh.errors import BadRequestError
from rlmesh.seeding import check_seed, is_seed
from rlmesh.spaces.gymnasium_bridge import spec_from_gymnasium_space
from rlmesh.specs import DEFAULT_ENV_ID, EnvContract
from rlmesh.tensor import Tensor


def is_vector_env(env: Any) -> bool:
    """Whether ``env`` looks like a Gymnasium vector env."""
    return all(hasattr(env, name) for name in ("num_envs", "single_observation_space", "single_action_space"))


def plain_data(value: Any, depth: int = 0) -> Any:
    """Reduce a value tree (metadata, info dicts) to what the wire carries.

    Dict keys become strings, NumPy scalars Python scalars, enums their value; numeric
    arrays and Tensors are kept; anything else becomes its repr.
    """
    if depth > 16:
        return repr(value)
    if value is None or isinstance(value, bool | int | float | str | bytes | Tensor):
        return value
    if isinstance(value, enum.Enum):
        return value.value if isinstance(value.value, str | int | float) else value.name
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return value
        return value.tolist() if value.dtype.kind in "US" else repr(value)
    if isinstance(value, dict):
        return {str(k): plain_data(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(plain_data(v, depth + 1) for v in value)
    return repr(value)


def _env_id(env: Any) -> str:
    spec = getattr(env, "spec", None)
    return getattr(spec, "id", None) or DEFAULT_ENV_ID


class EnvRunner:
    """Runs ops against one Gymnasium env (single or vector) and builds reply payloads."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.vector = is_vector_env(env)
        self.num_envs: int | None = None
        if self.vector:
            self.num_envs = int(env.num_envs)
            observation, action = env.single_observation_space, env.single_action_space
        else:
            observation, action = env.observation_space, env.action_space
        self.contract = EnvContract(
            observation_space=spec_from_gymnasium_space(observation),
            action_space=spec_from_gymnasium_space(action),
            id=_env_id(env),
            render_mode=getattr(env, "render_mode", None),
            num_envs=self.num_envs,
            metadata=plain_data(dict(getattr(env, "metadata", {}) or {})),
        )
        self._actions = ActionGate(self.contract.action_space, self.contract.num_envs)

    def reset(self, payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise BadRequestError(f"reset expects a dict payload, got {type(payload).__name__}")
        seed = payload.get("seed")
        options = payload.get("options")
        _check_seed(seed, self.num_envs)
        if options is not None and not isinstance(options, dict):
            raise BadRequestError(f"reset options must be a dict or None, got {options!r:.100}")
        observation, info = self.env.reset(seed=seed, options=options)
        return [observation, info]

    def step(self, action: Any) -> Any:
        action = self._actions(action)
        if self.vector:
            return list(self.env.step(action))
        observation, reward, terminated, truncated, info = self.env.step(action)
        return [observation, float(reward), bool(terminated), bool(truncated), info]

    def render(self) -> Any:
        frames = self.env.render()
        return list(frames) if isinstance(frames, tuple) else frames

    def close(self) -> None:
        self.env.close()


def _check_seed(seed: Any, num_envs: int | None) -> None:
    if isinstance(seed, list | tuple) and num_envs is not None:
        if len(seed) != num_envs or not all(is_seed(s) for s in seed):
            raise BadRequestError(f"seed list {seed!r:.100} must hold {num_envs} non-negative ints or None")
        return
    try:
        check_seed(seed)
    except ValueError as error:
        raise BadRequestError(str(error)) from None
