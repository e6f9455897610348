"""Turn a serve SOURCE (Gymnasium id or ``module:callable``) into an env factory."""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from typing import Any

VECTORIZATION_MODES = ("sync", "async")


def parse_kwargs(pairs: list[str]) -> dict[str, Any]:
    """Parse ``key=value`` pairs; values are JSON, or plain strings when not valid JSON."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--kwarg {pair!r} must look like key=value with a Python identifier as key")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text
    return kwargs


def load_callable(target: str) -> Callable[..., Any]:
    """Import ``module:attr.path`` and return the callable it names."""
    module_name, _, attr_path = target.partition(":")
    if not module_name or not attr_path:
        raise ValueError(f"{target!r} is not module:callable")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is a {type(obj).__name__}, not a callable that makes an env")
    return obj


def env_factory(
    source: str,
    *,
    num_envs: int | None = None,
    vectorization_mode: str = "sync",
    kwargs: dict[str, Any] | None = None,
) -> Callable[[], Any]:
    """A zero-argument factory for ``source``, vectorised when ``num_envs`` is given.

    Args:
        source: A Gymnasium id (``CartPole-v1``, ``gym://CartPole-v1``) or ``module:callable``
            (``py://module:callable``) whose callable returns a Gymnasium env.
        num_envs: Lanes of a vector env (Gymnasium's NEXT_STEP autoreset), or None.
        vectorization_mode: ``"sync"`` or ``"async"``.
        kwargs: Keyword arguments for the env constructor.
    """
    kwargs = dict(kwargs or {})
    if vectorization_mode not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization_mode {vectorization_mode!r} is not one of {VECTORIZATION_MODES}")
    if num_envs is not None and (not isinstance(num_envs, int) or num_envs < 1):
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    for prefix in ("gym://", "py://"):
        if source.startswith(prefix):
            source = source[len(prefix) :]
    if ":" in source:
        make_one = functools.partial(load_callable(source), **kwargs)
        if num_envs is None:
            return make_one
        return functools.partial(_make_vector, make_one, num_envs, vectorization_mode)
    import gymnasium

    if num_envs is None:
        return functools.partial(gymnasium.make, source, **kwargs)
    return functools.partial(
        gymnasium.make_vec, source, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs
    )


def _make_vector(make_one: Callable[[], Any], num_envs: int, mode: str) -> Any:
    import gymnasium

    cls = gymnasium.vector.SyncVectorEnv if mode == "sync" else gymnasium.vector.AsyncVectorEnv
    return cls([make_one] * num_envs)
