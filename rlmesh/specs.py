"""Framework-neutral descriptions of spaces and environment contracts, as sent at handshake.

A space spec is one typed class per kind (:class:`BoxSpec`, :class:`DiscreteSpec`, ...), all
subclasses of :class:`SpaceSpec`. Code that treats kinds differently dispatches on these types
with :func:`functools.singledispatch`, one registration per kind.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "DEFAULT_ENV_ID",
    "SPACE_KINDS",
    "BoxSpec",
    "DictSpec",
    "DiscreteSpec",
    "EnvContract",
    "MultiBinarySpec",
    "MultiDiscreteSpec",
    "SpaceSpec",
    "TextSpec",
    "TupleSpec",
    "compact_bound",
]

DEFAULT_ENV_ID = "UnknownEnv-v1"
DEFAULT_CHARSET = string.ascii_letters + string.digits


def compact_bound(bound: Any) -> Any:
    """A scalar when every element is equal (cheap handshakes for image spaces), else lists."""
    array = np.asarray(bound)
    flat = array.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return flat[0].item()
    return array.tolist()


class SpaceSpec:
    """A space described by plain data; the base of one typed class per space kind.

    Attributes:
        kind: The wire name of the kind (``"box"``, ``"discrete"``, ``"multi_binary"``,
            ``"multi_discrete"``, ``"text"``, ``"dict"``, ``"tuple"``).
        shape: The shape of one value (``()`` for Discrete, Text and containers).
        dtype: Wire dtype name of the values, None for Text and containers.
    """

    kind: ClassVar[str]
    shape: tuple[int, ...]
    dtype: str | None
    _kinds: ClassVar[dict[str, type[SpaceSpec]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SpaceSpec._kinds[cls.kind] = cls

    def __hash__(self) -> int:
        return hash((self.kind, self.shape, self.dtype))

    def _details(self) -> dict[str, Any]:  # pragma: no cover - every kind overrides it
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (msgpack/JSON friendly); nested specs become dicts."""
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype, "details": self._details()}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> SpaceSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: when ``data`` is not a space description.
        """
        if not isinstance(data, Mapping) or "kind" not in data:
            raise ValueError(f"not a space spec: {data!r:.200}")
        kind_class = SpaceSpec._kinds.get(data["kind"])
        if kind_class is None:
            raise ValueError(f"space kind {data['kind']!r} is not one of {', '.join(SPACE_KINDS)}")
        try:
            return kind_class._from_wire(tuple(data.get("shape") or ()), data.get("dtype"), data.get("details") or {})
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed {data['kind']} space spec {data!r:.200}: {error!r}") from None

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> SpaceSpec:
        raise NotImplementedError  # pragma: no cover - every kind overrides it


def _as_spec(value: Any) -> SpaceSpec:
    return value if isinstance(value, SpaceSpec) else SpaceSpec.from_dict(value)


@dataclass(frozen=True, eq=True)
class BoxSpec(SpaceSpec):
    """A Box: values of ``shape`` and ``dtype`` within ``low``/``high`` (scalars or nested lists)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: Any = -np.inf
    high: Any = np.inf
    kind: ClassVar[str] = "box"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "low", compact_bound(self.low))
        object.__setattr__(self, "high", compact_bound(self.high))

    __hash__ = SpaceSpec.__hash__

    def _details(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> BoxSpec:
        return cls(shape, dtype or "float32", details.get("low", -np.inf), details.get("high", np.inf))


@dataclass(frozen=True, eq=True)
class DiscreteSpec(SpaceSpec):
    """A Discrete space: integers ``start .. start + n - 1``."""

    n: int
    start: int = 0
    dtype: str = "int64"
    kind: ClassVar[str] = "discrete"

    def __post_init__(self) -> None:
        object.__setattr__(self, "n", int(self.n))
        object.__setattr__(self, "start", int(self.start))

    __hash__ = SpaceSpec.__hash__

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        """Always ``()``."""
        return ()

    def _details(self) -> dict[str, Any]:
        return {"n": self.n, "start": self.start}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> DiscreteSpec:
        return cls(details["n"], details.get("start", 0), dtype or "int64")


@dataclass(frozen=True, eq=True)
class MultiBinarySpec(SpaceSpec):
    """A MultiBinary space: 0/1 arrays of ``shape``."""

    shape: tuple[int, ...]
    dtype: str = "int8"
    kind: ClassVar[str] = "multi_binary"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    __hash__ = SpaceSpec.__hash__

    def _details(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> MultiBinarySpec:
        return cls(shape, dtype or "int8")


@dataclass(frozen=True, eq=True)
class MultiDiscreteSpec(SpaceSpec):
    """A MultiDiscrete space: element ``i`` in ``start[i] .. start[i] + nvec[i] - 1``."""

    nvec: Any
    start: Any = None
    dtype: str = "int64"
    kind: ClassVar[str] = "multi_discrete"

    def __post_init__(self) -> None:
        nvec = np.asarray(self.nvec, dtype=np.int64)
        start = np.broadcast_to(np.asarray(0 if self.start is None else self.start, dtype=np.int64), nvec.shape)
        object.__setattr__(self, "nvec", nvec.tolist())
        object.__setattr__(self, "start", start.tolist())

    __hash__ = SpaceSpec.__hash__

    @property
    def shape(self) -> tuple[int, ...]:  # type: ignore[override]
        """The shape of ``nvec``."""
        return np.shape(self.nvec)

    def _details(self) -> dict[str, Any]:
        return {"nvec": self.nvec, "start": self.start}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> MultiDiscreteSpec:
        return cls(details["nvec"], details.get("start"), dtype or "int64")


@dataclass(frozen=True, eq=True)
class TextSpec(SpaceSpec):
    """A Text space: strings of ``min_length .. max_length`` characters from ``charset``."""

    max_length: int
    min_length: int = 1
    charset: str = DEFAULT_CHARSET
    kind: ClassVar[str] = "text"
    shape: ClassVar[tuple[int, ...]] = ()  # type: ignore[misc]
    dtype: ClassVar[None] = None  # type: ignore[misc]

    def __post_init__(self) -> None:
        object.__setattr__(self, "charset", "".join(sorted(set(self.charset))))

    __hash__ = SpaceSpec.__hash__

    def _details(self) -> dict[str, Any]:
        return {"min_length": self.min_length, "max_length": self.max_length, "charset": self.charset}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> TextSpec:
        return cls(int(details["max_length"]), int(details.get("min_length", 1)), details.get("charset", ""))


@dataclass(frozen=True, eq=True)
class DictSpec(SpaceSpec):
    """A Dict space: a mapping of string keys to subspace specs."""

    spaces: Mapping[str, SpaceSpec] = field(default_factory=dict)
    kind: ClassVar[str] = "dict"
    shape: ClassVar[tuple[int, ...]] = ()  # type: ignore[misc]
    dtype: ClassVar[None] = None  # type: ignore[misc]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spaces", {str(key): _as_spec(sub) for key, sub in dict(self.spaces).items()})

    __hash__ = SpaceSpec.__hash__

    def _details(self) -> dict[str, Any]:
        return {"spaces": {key: sub.to_dict() for key, sub in self.spaces.items()}}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> DictSpec:
        return cls(details["spaces"])


@dataclass(frozen=True, eq=True)
class TupleSpec(SpaceSpec):
    """A Tuple space: a fixed-length sequence of subspace specs."""

    spaces: Sequence[SpaceSpec] = ()
    kind: ClassVar[str] = "tuple"
    shape: ClassVar[tuple[int, ...]] = ()  # type: ignore[misc]
    dtype: ClassVar[None] = None  # type: ignore[misc]

    def __post_init__(self) -> None:
        object.__setattr__(self, "spaces", tuple(_as_spec(sub) for sub in self.spaces))

    __hash__ = SpaceSpec.__hash__

    def _details(self) -> dict[str, Any]:
        return {"spaces": [sub.to_dict() for sub in self.spaces]}

    @classmethod
    def _from_wire(cls, shape: tuple[int, ...], dtype: str | None, details: Mapping[str, Any]) -> TupleSpec:
        return cls(details["spaces"])


SPACE_KINDS = tuple(SpaceSpec._kinds)
"""The wire names of the space kinds."""


@dataclass(frozen=True)
class EnvContract:
    """What an endpoint serves: id, spaces (per lane), render mode, metadata and lane count.

    Attributes:
        id: Environment id, ``"UnknownEnv-v1"`` when the env has no spec.
        observation_space: Spec of one lane's observation.
        action_space: Spec of one lane's action.
        render_mode: The env's render mode, or None.
        num_envs: Number of lanes for a vector endpoint, None for a single env.
        metadata: The env's metadata, reduced to plain data.
    """

    observation_space: SpaceSpec
    action_space: SpaceSpec
    id: str = DEFAULT_ENV_ID
    render_mode: str | None = None
    num_envs: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def is_vector(self) -> bool:
        """Whether this contract describes a vector endpoint."""
        return self.num_envs is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form sent in the handshake."""
        return {
            "id": self.id,
            "render_mode": self.render_mode,
            "num_envs": self.num_envs,
            "metadata": self.metadata,
            "observation_space": self.observation_space.to_dict(),
            "action_space": self.action_space.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvContract:
        """Inverse of :meth:`to_dict`."""
        return cls(
            observation_space=SpaceSpec.from_dict(data["observation_space"]),
            action_space=SpaceSpec.from_dict(data["action_space"]),
            id=data.get("id") or DEFAULT_ENV_ID,
            render_mode=data.get("render_mode"),
            num_envs=data.get("num_envs"),
            metadata=dict(data.get("metadata") or {}),
        )
