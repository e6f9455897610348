"""Framework-neutral descriptions of spaces and environment contracts, as sent at handshake."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SPACE_KINDS = ("box", "discrete", "multi_binary", "multi_discrete", "text", "dict", "tuple")
DEFAULT_ENV_ID = "UnknownEnv-v1"


@dataclass(frozen=True)
class SpaceSpec:
    """A space described by plain data.

    Attributes:
        kind: One of ``box``, ``discrete``, ``multi_binary``, ``multi_discrete``, ``text``,
            ``dict``, ``tuple``.
        shape: The shape of one value (``()`` for Discrete and Text).
        dtype: Wire dtype name of the values, ``None`` for Text and containers.
        details: Kind-specific data: ``low``/``high`` (box), ``n``/``start`` (discrete),
            ``nvec``/``start`` (multi_discrete), ``min_length``/``max_length``/``charset``
            (text), ``spaces`` (dict: name -> SpaceSpec, tuple: list of SpaceSpec).
    """

    kind: str
    shape: tuple[int, ...] = ()
    dtype: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in SPACE_KINDS:
            raise ValueError(f"space kind {self.kind!r} is not one of {', '.join(SPACE_KINDS)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    def __hash__(self) -> int:
        return hash((self.kind, self.shape, self.dtype))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (msgpack/JSON friendly); nested specs become dicts."""
        details = dict(self.details)
        if self.kind == "dict":
            details["spaces"] = {k: v.to_dict() for k, v in self.details["spaces"].items()}
        elif self.kind == "tuple":
            details["spaces"] = [v.to_dict() for v in self.details["spaces"]]
        return {"kind": self.kind, "shape": list(self.shape), "dtype": self.dtype, "details": details}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpaceSpec:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: when ``data`` is not a space description.
        """
        if not isinstance(data, dict) or "kind" not in data:
            raise ValueError(f"not a space spec: {data!r:.200}")
        details = dict(data.get("details") or {})
        kind = data["kind"]
        if kind == "dict":
            details["spaces"] = {k: cls.from_dict(v) for k, v in details["spaces"].items()}
        elif kind == "tuple":
            details["spaces"] = [cls.from_dict(v) for v in details["spaces"]]
        return cls(kind, tuple(data.get("shape") or ()), data.get("dtype"), details)


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
