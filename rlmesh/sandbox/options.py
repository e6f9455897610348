"""Sandbox keyword arguments, declared once, and the container's resource limits.

``SandboxSettings`` is the single declaration of the keyword arguments every sandbox session
accepts. :func:`sandbox_keywords` gives a constructor written as ``__init__(self, source, ...,
**env_kwargs)`` the real signature (so ``help()`` lists every keyword with its default) and
splits the keywords from the env's own keyword arguments at call time.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import os
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_MEMORY",
    "DEFAULT_PIDS",
    "SandboxOptions",
    "SandboxSettings",
    "default_cpus",
    "sandbox_keywords",
]

DEFAULT_MEMORY = "2g"
DEFAULT_PIDS = 256
DEFAULT_MAX_CPUS = 2.0
_MIN_MEMORY = 6 * 1024 * 1024  # Docker refuses less
_MEMORY = re.compile(r"(?P<number>[0-9]+)(?P<unit>[bkmg]?)", re.ASCII | re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}

F = TypeVar("F", bound=Callable[..., None])


def default_cpus() -> float:
    """Two CPUs, or every CPU of the host when it has fewer."""
    return float(min(DEFAULT_MAX_CPUS, os.cpu_count() or 1))


def _memory_bytes(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _MEMORY.fullmatch(value.strip())):
        number = int(match["number"]) * _UNITS[match["unit"].lower()]
    else:
        raise ValueError(f"SandboxOptions.memory must be bytes (int) or a size such as '512m' or '2g', got {value!r}")
    if number < _MIN_MEMORY:
        raise ValueError(f"SandboxOptions.memory must be at least 6 MiB (Docker's minimum), got {value!r}")
    return number


@dataclass(frozen=True)
class SandboxOptions:
    """Resource limits of a sandbox container.

    Example:
        >>> SandboxOptions(cpus=1.0, memory="1g", pids=128)  # doctest: +SKIP

    Attributes:
        cpus: CPU time the container may use, in CPUs (``0.5`` is half a core); default two,
            or every CPU of the host when it has fewer.
        memory: Memory limit, bytes or a size such as ``"512m"``/``"2g"``; swap is limited to
            the same amount, so the container never swaps past it.
        pids: Maximum number of processes and threads in the container.

    Raises:
        ValueError: A limit is not positive or not in the form above.
    """

    cpus: float = field(default_factory=default_cpus)
    memory: str | int = DEFAULT_MEMORY
    pids: int = DEFAULT_PIDS

    def __post_init__(self) -> None:
        cpus = self.cpus
        if not isinstance(cpus, int | float) or isinstance(cpus, bool) or not math.isfinite(cpus) or cpus < 0.01:
            raise ValueError(f"SandboxOptions.cpus must be a number of CPUs >= 0.01, got {cpus!r}")
        _memory_bytes(self.memory)
        if not isinstance(self.pids, int) or isinstance(self.pids, bool) or self.pids < 1:
            raise ValueError(f"SandboxOptions.pids must be a positive int, got {self.pids!r}")

    @property
    def memory_bytes(self) -> int:
        """The memory limit in bytes."""
        return _memory_bytes(self.memory)

    def docker_limits(self) -> dict[str, Any]:
        """Keyword arguments for ``docker.containers.run``: CPU, memory (swap equal) and pids."""
        memory = self.memory_bytes
        return {
            "nano_cpus": round(self.cpus * 1e9),
            "mem_limit": memory,
            "memswap_limit": memory,
            "pids_limit": self.pids,
        }


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, kw_only=True)
class SandboxSettings:
    """The keyword arguments shared by every sandbox session (see each field's ``doc``)."""

    base_image: str | None = field(
        default=None,
        metadata=_doc(
            "Docker base image; default ``$RLMESH_SANDBOX_BASE_IMAGE``, else the local "
            "``rlmesh/python-base:3.11`` when present, else ``python:3.X-slim``."
        ),
    )
    rlmesh_package: str | None = field(
        default=None,
        metadata=_doc(
            '``"local"`` (a wheel of this checkout), a wheel path, or a pip requirement; default '
            "``rlmesh==<host version>``."
        ),
    )
    packages: Sequence[str] = field(default=(), metadata=_doc("Extra pip requirements installed in the sandbox."))
    imports: Sequence[str] = field(
        default=(), metadata=_doc("Module names imported at build time; a failure names the module.")
    )
    trust_remote_code: bool = field(
        default=False, metadata=_doc("Allow remote (Hugging Face) environment code to run.")
    )
    allow_unpinned_hf: bool = field(default=False, metadata=_doc("Allow Hugging Face sources without a 40-hex commit."))
    connect_timeout_seconds: float = field(
        default=60.0, metadata=_doc("Seconds to wait for the sandboxed server to be ready.")
    )
    request_timeout_seconds: float | None = field(
        default=None, metadata=_doc("Per-request timeout of the client (None: no timeout).")
    )
    sandbox_options: SandboxOptions | None = field(
        default=None,
        metadata=_doc("Container resource limits (CPU, memory, pids); default ``SandboxOptions()``."),
    )

    def __post_init__(self) -> None:
        from rlmesh.sandbox.grammar import check_image_reference, check_module_names, check_requirements

        if self.base_image is not None:
            object.__setattr__(self, "base_image", check_image_reference(self.base_image, "base_image"))
        object.__setattr__(self, "packages", tuple(check_requirements(self.packages, "packages")))
        object.__setattr__(self, "imports", tuple(check_module_names(self.imports, "imports")))
        timeout = self.connect_timeout_seconds
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise ValueError(f"connect_timeout_seconds must be a positive number, got {timeout!r}")
        options = self.sandbox_options
        if options is not None and not isinstance(options, SandboxOptions):
            raise TypeError(
                f"sandbox_options must be a SandboxOptions(cpus=..., memory=..., pids=...), "
                f"got {type(options).__name__}: {options!r}"
            )

    @property
    def limits(self) -> SandboxOptions:
        """The resource limits to apply (the defaults when none were given)."""
        return self.sandbox_options or SandboxOptions()

    @classmethod
    def split(cls, kwargs: Mapping[str, Any]) -> tuple[SandboxSettings, dict[str, Any]]:
        """Separate the sandbox keywords from the environment's own keyword arguments."""
        names = {f.name for f in dataclasses.fields(cls)}
        settings = cls(**{k: v for k, v in kwargs.items() if k in names})
        return settings, {k: v for k, v in kwargs.items() if k not in names}

    @classmethod
    def parameters(cls) -> list[inspect.Parameter]:
        """The keyword-only parameters of a sandbox constructor, with types and defaults."""
        return [
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
            for f in dataclasses.fields(cls)
        ]

    @classmethod
    def docs(cls, indent: str = "        ") -> str:
        """``Args:`` lines documenting every sandbox keyword."""
        return "\n".join(
            textwrap.fill(
                f"{f.name}: {f.metadata['doc']}", 92, initial_indent=indent, subsequent_indent=indent + "    "
            )
            for f in dataclasses.fields(cls)
        )


def sandbox_keywords(init: F) -> F:
    """Give ``init(self, ..., **env_kwargs)`` the sandbox keywords, declared by ``SandboxSettings``.

    The wrapped function receives ``settings`` (a ``SandboxSettings``) as a keyword and the
    rest of the keywords as its ``**env_kwargs``; its ``__signature__`` shows every parameter.
    """
    signature = inspect.signature(init)
    params = [p for p in signature.parameters.values() if p.name != "settings"]
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    fixed = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        settings, env_kwargs = SandboxSettings.split(kwargs)
        init(self, *args, settings=settings, **env_kwargs)

    wrapper.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[*fixed, *SandboxSettings.parameters(), *var_kw]
    )
    return wrapper  # type: ignore[return-value]
