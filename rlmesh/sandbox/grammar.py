"""Grammars for the user strings that reach a Dockerfile, an image tag or a command line.

Each check returns the value (stripped) or raises ``ValueError`` naming the parameter, so a
newline or an option-looking string can never add a Dockerfile line or a pip option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from rlmesh.errors import missing_extra
from rlmesh.sources import is_dotted_name

__all__ = [
    "check_image_reference",
    "check_module_names",
    "check_requirement",
    "check_requirements",
    "check_wheel_filename",
]

# The Docker distribution reference grammar: [domain[:port]/]path[:tag][@digest].
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_PART}(?:/{_PATH_PART})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_REFERENCE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?", re.ASCII)
_NAME_MAX = 255


def check_image_reference(value: object, parameter: str) -> str:
    """An image reference such as ``python:3.11-slim`` or ``registry:5000/org/img@sha256:...``.

    Raises:
        ValueError: ``value`` is not a string in the image reference grammar.
    """
    text = value.strip() if isinstance(value, str) else value
    match = _REFERENCE.fullmatch(text) if isinstance(text, str) else None
    if match is None or len(match["name"]) > _NAME_MAX:
        raise ValueError(
            f"{parameter} must be a Docker image reference such as 'python:3.11-slim' or "
            f"'rlmesh/python-base:3.11' ([registry/]name[:tag][@digest], lower-case name), got {value!r}"
        )
    return text


def _ensure_packaging() -> None:
    try:
        import packaging.requirements  # noqa: F401
    except ImportError as exc:
        raise missing_extra("sandbox", "packaging") from exc


def check_requirement(value: object, parameter: str) -> str:
    """A PEP 508 requirement specifier such as ``numpy>=1.26`` or ``pkg @ https://...``.

    Raises:
        ValueError: ``value`` is not a string that ``packaging`` parses as a requirement.
    """
    _ensure_packaging()
    from packaging.requirements import InvalidRequirement, Requirement

    text = value.strip() if isinstance(value, str) else None
    if text and "\n" not in text and "\r" not in text:
        try:
            Requirement(text)
            return text
        except InvalidRequirement:
            pass
    raise ValueError(f"{parameter} must hold pip requirement specifiers such as 'numpy>=1.26' (PEP 508), got {value!r}")


def _sequence(values: object, parameter: str) -> Sequence[object]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise TypeError(f"{parameter} must be a list of strings, got {type(values).__name__}: {values!r}")
    return values


def check_requirements(values: object, parameter: str) -> list[str]:
    """Each item of ``values`` checked by :func:`check_requirement`."""
    return [check_requirement(value, parameter) for value in _sequence(values, parameter)]


def check_module_names(values: object, parameter: str) -> list[str]:
    """Each item of ``values`` a dotted module name such as ``gymnasium.envs``.

    Raises:
        TypeError: ``values`` is not a sequence of strings.
        ValueError: An item is not a dotted module name.
    """
    names = []
    for value in _sequence(values, parameter):
        text = value.strip() if isinstance(value, str) else None
        if not text or not is_dotted_name(text):
            raise ValueError(f"{parameter} must hold dotted module names such as 'gymnasium.envs', got {value!r}")
        names.append(text)
    return names


def check_wheel_filename(name: str, parameter: str) -> str:
    """A wheel file name such as ``rlmesh-0.1.0-py3-none-any.whl``.

    Raises:
        ValueError: ``name`` is not a valid wheel file name.
    """
    _ensure_packaging()
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        parse_wheel_filename(name)
    except InvalidWheelFilename as exc:
        raise ValueError(
            f"{parameter} must name a wheel file such as 'rlmesh-0.1.0-py3-none-any.whl', got {name!r} ({exc})"
        ) from exc
    return name
