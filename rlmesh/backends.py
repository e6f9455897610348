"""How a backend's public classes are declared: one decorator sets the bridge and the docs.

Each backend module (``rlmesh.plain``, ``rlmesh.numpy``, ``rlmesh.jax``) declares its classes
as two-line subclasses of the generic bases::

    @backend_class(NUMPY_BRIDGE, "Remote client for one environment; tensor leaves decode to NumPy arrays.")
    class RemoteEnv(RemoteEnvBase[NumpyValue, NumpyValue]): ...

The decorator binds the bridge (and any other class attributes, such as a sandbox's
``client_class``), writes the docstring from the summary plus the bases' own
Args/Raises sections (so ``help()`` lists every parameter and cannot drift from the base),
runs the backend's availability check before ``__init__`` without hiding the signature, marks
the class ``final`` and records clients per bridge for :func:`client_classes`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, final

from rlmesh.bridges import Bridge
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase

__all__ = ["backend_class", "client_classes"]

ClassT = TypeVar("ClassT", bound=type)

_CLIENTS: dict[Bridge, dict[str, type]] = {}


def _details(base: type) -> str:
    """The base class docstring after its summary paragraph (Args, Raises, ...)."""
    doc = inspect.cleandoc(base.__doc__ or "")
    _, _, rest = doc.partition("\n\n")
    return rest


def backend_class(
    bridge: Bridge,
    summary: str,
    *,
    require: Callable[[], None] | None = None,
    **attributes: Any,
) -> Callable[[ClassT], ClassT]:
    """Declare a backend's public class.

    Args:
        bridge: The backend's leaf table, set as the class's ``bridge``.
        summary: The docstring's first paragraph; the base class's Args and Raises follow it.
        require: Called before ``__init__`` (e.g. JAX's availability check, which raises an
            ImportError naming the extra).
        **attributes: Further class attributes (a sandbox's ``client_class``).

    Returns:
        A class decorator returning the same class, marked ``final``.
    """

    def declare(cls: ClassT) -> ClassT:
        cls.bridge = bridge
        for name, value in attributes.items():
            setattr(cls, name, value)
        bases = [klass for klass in cls.__mro__[1:] if klass.__module__.startswith("rlmesh.")]
        details = [text for text in (_details(klass) for klass in reversed(bases)) if text]
        cls.__doc__ = "\n\n".join([summary, *details])
        if require is not None:
            _require_before_init(cls, require)
        for role, client_base in (("single", RemoteEnvBase), ("vector", RemoteVectorEnvBase)):
            if issubclass(cls, client_base):
                _CLIENTS.setdefault(bridge, {})[role] = cls
        return final(cls)

    return declare


def _require_before_init(cls: type, require: Callable[[], None]) -> None:
    init = cls.__init__

    @functools.wraps(init)  # keeps the signature (``__wrapped__``) and docs for help() and IDEs
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        require()
        init(self, *args, **kwargs)

    cls.__init__ = __init__  # type: ignore[misc]


def client_classes(bridge: Bridge) -> tuple[type[RemoteEnvBase[Any, Any]], type[RemoteVectorEnvBase[Any, Any]]]:
    """The single and vector client classes declared for ``bridge``.

    Raises:
        LookupError: no backend declared clients for ``bridge``.
    """
    declared = _CLIENTS.get(bridge, {})
    if "single" not in declared or "vector" not in declared:
        raise LookupError(f"no RemoteEnv/RemoteVectorEnv is declared for the {bridge.name!r} backend")
    return declared["single"], declared["vector"]  # type: ignore[return-value]
