"""The JAX availability check: is jax installed, and at least the supported floor?"""

from __future__ import annotations

import importlib

__all__ = ["MIN_JAX_VERSION", "check_jax_version", "ensure_available"]

MIN_JAX_VERSION: tuple[int, int, int] = (0, 4, 24)
"""The oldest supported jax: the first release whose DLPack import supports bool."""

_INSTALL_HINT = 'install the JAX extra: pip install "rlmesh[jax]"'
_checked = False


def check_jax_version(found: str | None) -> None:
    """Raise ImportError unless ``found`` (a jax ``__version__``, or None) meets the floor.

    Args:
        found: The installed jax version string (``"0.4.24"``, ``"0.5.0rc1"``,
            ``"0.4.30.dev20240601"``), or None when jax is not installed.

    Raises:
        ImportError: jax is missing, older than :data:`MIN_JAX_VERSION`, or its version
            cannot be parsed; the message names the floor, the version found and the extra.

    Example:
        >>> check_jax_version("0.10.2")
        >>> check_jax_version("0.4.23")
        Traceback (most recent call last):
        ImportError: rlmesh.jax requires jax >= 0.4.24, found jax 0.4.23; ...
    """
    from packaging.version import InvalidVersion, Version

    floor = ".".join(map(str, MIN_JAX_VERSION))
    if found is None:
        raise ImportError(f"rlmesh.jax requires jax >= {floor}, but jax is not installed; {_INSTALL_HINT}")
    try:
        version = Version(found)
    except InvalidVersion:
        raise ImportError(
            f"rlmesh.jax requires jax >= {floor}, found jax with unparseable version {found!r}; {_INSTALL_HINT}"
        ) from None
    if version.release[:3] < MIN_JAX_VERSION:
        raise ImportError(
            f'rlmesh.jax requires jax >= {floor}, found jax {found}; upgrade it: pip install -U "rlmesh[jax]"'
        )


def ensure_available() -> None:
    """Raise if JAX is not installed or is older than the supported floor.

    The installed jax is looked at when this is called (a passing check is remembered).

    Raises:
        ImportError: naming the ``jax`` extra (``pip install "rlmesh[jax]"``), the floor
            (0.4.24) and the version found.
    """
    global _checked
    if _checked:
        return
    try:
        jax = importlib.import_module("jax")
    except ImportError:
        check_jax_version(None)
    check_jax_version(jax.__version__)
    _checked = True
