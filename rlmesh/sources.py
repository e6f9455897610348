"""Env sources: parse ``gym://``/``py://`` strings and turn them into env factories.

One grammar serves ``rlmesh serve`` and the sandbox:

* ``CartPole-v1`` or ``gym://CartPole-v1``: a Gymnasium id (``[namespace/]name[-vN]``);
* ``module:callable`` or ``py://module:callable``: a callable returning a Gymnasium env
  (the sandbox also accepts a ``path/to/module.py`` or package directory as the location);
* any other ``scheme://rest`` is handed back for the caller to accept or refuse.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "VECTORIZATION_MODES",
    "SourceRef",
    "env_factory",
    "is_dotted_name",
    "load_callable",
    "parse_kwargs",
    "parse_source_ref",
]

VECTORIZATION_MODES = ("sync", "async")

# Gymnasium's own env id grammar (``gymnasium.envs.registration.ENV_ID_RE``), no whitespace.
_GYM_ID = re.compile(r"(?:[\w:.-]+/)?[\w:.-]+")


@dataclass(frozen=True)
class SourceRef:
    """A parsed env source.

    Attributes:
        raw: The source string as given.
        scheme: ``"gym"``, ``"py"``, or another lower-cased scheme left to the caller.
        body: The Gymnasium id (``gym``), the location before the last ``:`` (``py``), or
            everything after ``://`` (other schemes).
        attr: Dotted attribute path of the callable (``py`` only).
    """

    raw: str
    scheme: str
    body: str
    attr: str | None = None


def is_dotted_name(text: str) -> bool:
    """True for a dotted Python name such as ``pkg.module`` (no whitespace, no keywords check)."""
    return bool(text) and all(part.isidentifier() for part in text.split("."))


def _refuse(source: str, why: str) -> ValueError:
    return ValueError(
        f"env source {source!r} {why}; expected a Gymnasium id such as 'CartPole-v1' "
        "(or 'gym://CartPole-v1') or 'module:callable' (or 'py://module:callable')"
    )


def parse_source_ref(source: str) -> SourceRef:
    """Split ``source`` by scheme and check the ``gym``/``py`` grammar.

    A bare string is a ``py`` source when it has a ``:`` followed by a dotted name, and a
    Gymnasium id otherwise (Gymnasium ids may hold ``module:`` prefixes).

    Raises:
        TypeError: ``source`` is not a string.
        ValueError: A malformed Gymnasium id or ``location:callable``.
    """
    if not isinstance(source, str):
        raise TypeError(f"env source must be a str, got {type(source).__name__}: {source!r}")
    text = source.strip()
    if not text:
        raise _refuse(source, "is empty")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
    else:
        location, colon, attr = text.rpartition(":")
        scheme, rest = ("py", text) if colon and location and is_dotted_name(attr) else ("gym", text)
    if scheme == "gym":
        if not _GYM_ID.fullmatch(rest):
            raise _refuse(source, f"has {rest!r}, which is not a Gymnasium id")
        return SourceRef(source, "gym", rest)
    if scheme == "py":
        location, colon, attr = rest.rpartition(":")
        if not colon or not location.strip():
            raise _refuse(source, "needs '<module>:<callable>'")
        if not is_dotted_name(attr):
            raise _refuse(source, f"names {attr!r}, which is not a Python attribute path")
        if any(c.isspace() and c != " " for c in location):
            raise _refuse(source, f"has a control character in its location {location!r}")
        return SourceRef(source, "py", location, attr)
    return SourceRef(source, scheme, rest)


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
    if not is_dotted_name(module_name) or not is_dotted_name(attr_path):
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

    Raises:
        ValueError: Malformed source, unknown scheme, bad ``num_envs`` or mode.
    """
    kwargs = dict(kwargs or {})
    if vectorization_mode not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization_mode {vectorization_mode!r} is not one of {VECTORIZATION_MODES}")
    if num_envs is not None and (not isinstance(num_envs, int) or num_envs < 1):
        raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
    ref = parse_source_ref(source)
    if ref.scheme == "py":
        if not is_dotted_name(ref.body):
            raise ValueError(f"env source {source!r}: {ref.body!r} is not an importable module name")
        make_one = functools.partial(load_callable(f"{ref.body}:{ref.attr}"), **kwargs)
        if num_envs is None:
            return make_one
        return functools.partial(_make_vector, make_one, num_envs, vectorization_mode)
    if ref.scheme != "gym":
        raise ValueError(f"env source {source!r}: scheme {ref.scheme + '://'!r} cannot be served; use gym:// or py://")
    import gymnasium

    if num_envs is None:
        return functools.partial(gymnasium.make, ref.body, **kwargs)
    return functools.partial(
        gymnasium.make_vec, ref.body, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs
    )


def _make_vector(make_one: Callable[[], Any], num_envs: int, mode: str) -> Any:
    import gymnasium

    cls = gymnasium.vector.SyncVectorEnv if mode == "sync" else gymnasium.vector.AsyncVectorEnv
    return cls([make_one] * num_envs)
