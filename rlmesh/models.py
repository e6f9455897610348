"""Models: a policy in one backend's values, and ``run()`` to evaluate it on any environment.

:class:`ModelBase` holds all model behaviour and is generic over the observation and action
types; a backend binds it to its :class:`~rlmesh.bridges.Bridge` with a one-line subclass
(:class:`Model` here, with :class:`~rlmesh.tensor.Tensor` leaves; ``rlmesh.numpy.Model`` with
NumPy arrays; ``rlmesh.jax.Model`` with JAX arrays).

Build a model from a function, or subclass it::

    model = rlmesh.numpy.Model(lambda obs: int(obs[2] > 0))      # CartPole: push toward the pole
    result = model.run("tcp://127.0.0.1:5555", seeds=range(20))
    print(result.summary())

    class Greedy(rlmesh.jax.Model):
        def load(self):                      # once, before the first predict
            self.params = restore_checkpoint()
        def predict_batch(self, obs):        # obs: every leaf stacked on a leading N axis
            return jnp.argmax(apply(self.params, obs), axis=-1)

Observations reach ``predict`` / ``predict_batch`` in the model's backend whatever the env's
backend is (a NumPy client's arrays are re-decoded for a JAX model, and so on). Actions may be
backend arrays, NumPy arrays or Python values; they are converted to NumPy and checked against
the env's action space before they are sent, so a bad action is a local
:class:`~rlmesh.errors.InvalidActionError` that names the action and the space.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, final

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge
from rlmesh.errors import InvalidActionError
from rlmesh.evaluation import EpisodeResult, RunResult, evaluate
from rlmesh.security import KeySource
from rlmesh.specs import EnvContract, SpaceSpec
from rlmesh.tensor import Tensor

if TYPE_CHECKING:
    from rlmesh.spaces import Space

__all__ = ["RANDOM_SAMPLE", "EpisodeResult", "Model", "ModelBase", "RunResult", "run"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")

_PRIMITIVES = (bool, int, float, str, bytes)


# -- value trees -----------------------------------------------------------------------------


def _leaf_to_numpy(value: Any, where: str) -> Any:
    """A NumPy array (or Python primitive for 0-d values) for one action leaf."""
    if value is None or isinstance(value, str | bytes):
        return value
    if isinstance(value, _PRIMITIVES):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Tensor):
        array = value.numpy()
    else:
        try:
            array = np.asarray(value)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"{where} is ragged or not array-like ({error}): {value!r:.120}") from None
    if array.dtype == object:
        raise ValueError(f"{where} is ragged or not array-like: {value!r:.120}")
    return array.item() if array.ndim == 0 else array


def _tree_to_numpy(value: Any, spec: SpaceSpec | None, where: str = "action") -> Any:
    """Convert an action tree's leaves to NumPy arrays / primitives, following ``spec``."""
    kind = spec.kind if spec is not None else None
    if kind == "dict" or (kind is None and isinstance(value, Mapping)):
        if not isinstance(value, Mapping):
            return value  # the checker explains
        subs = spec.spaces if spec is not None else {}
        return {key: _tree_to_numpy(item, subs.get(key), f"{where}[{key!r}]") for key, item in value.items()}
    if kind == "tuple" or (kind is None and isinstance(value, tuple)):
        if not isinstance(value, tuple | list):
            return value
        subs = spec.spaces if spec is not None else [None] * len(value)
        return tuple(
            _tree_to_numpy(item, subs[i] if i < len(subs) else None, f"{where}[{i}]") for i, item in enumerate(value)
        )
    if kind == "text":
        return value
    return _leaf_to_numpy(value, where)


def _batched_to_numpy(value: Any, spec: SpaceSpec | None, num_envs: int, where: str = "action") -> Any:
    """Normalise a ``predict_batch`` result: every leaf an array with leading axis ``num_envs``.

    A ``list`` of ``num_envs`` per-lane actions is stacked (except for Tuple action spaces,
    where a list reads as the tuple's components).

    Raises:
        ValueError: a None leaf, a ragged leaf, or a leading axis other than ``num_envs``.
    """
    kind = spec.kind if spec is not None else None
    if value is None:
        raise ValueError(f"predict_batch returned None for {where}; expected one value per lane ({num_envs} lanes)")
    if isinstance(value, list) and kind != "tuple" and kind != "text":
        if len(value) != num_envs:
            raise ValueError(
                f"predict_batch returned a list of {len(value)} actions for {where}; expected one per lane "
                f"({num_envs} lanes)"
            )
        lanes = [_tree_to_numpy(item, spec, f"{where} of lane {i}") for i, item in enumerate(value)]
        return _stack_lanes(lanes, spec, where)
    if kind == "dict" or (kind is None and isinstance(value, Mapping)):
        if not isinstance(value, Mapping):
            raise ValueError(
                f"predict_batch returned {type(value).__name__} for {where}; expected a dict of batched values"
            )
        subs = spec.spaces if spec is not None else {}
        return {
            key: _batched_to_numpy(item, subs.get(key), num_envs, f"{where}[{key!r}]") for key, item in value.items()
        }
    if kind == "tuple" or (kind is None and isinstance(value, tuple)):
        if not isinstance(value, tuple | list):
            raise ValueError(
                f"predict_batch returned {type(value).__name__} for {where}; expected a tuple of batched values"
            )
        subs = spec.spaces if spec is not None else [None] * len(value)
        return tuple(
            _batched_to_numpy(item, subs[i] if i < len(subs) else None, num_envs, f"{where}[{i}]")
            for i, item in enumerate(value)
        )
    if kind == "text":
        if not isinstance(value, tuple | list) or len(value) != num_envs:
            raise ValueError(f"predict_batch must return {num_envs} strings for {where}, got {value!r:.120}")
        return tuple(value)
    array = _leaf_to_numpy(value, where)
    if not isinstance(array, np.ndarray) or array.shape[:1] != (num_envs,):
        shape = getattr(array, "shape", ())
        raise ValueError(
            f"predict_batch returned {where} of shape {tuple(shape)}; expected a leading axis of "
            f"{num_envs} (one row per lane), e.g. shape ({num_envs}, ...)"
        )
    return array


def _stack_lanes(lanes: Sequence[Any], spec: SpaceSpec | None, where: str = "action") -> Any:
    """Stack per-lane values (already NumPy/primitive) on a leading axis, following ``spec``."""
    first = lanes[0]
    kind = spec.kind if spec is not None else None
    if kind == "dict" or (kind is None and isinstance(first, Mapping)):
        subs = spec.spaces if spec is not None else {}
        keys = list(first) if isinstance(first, Mapping) else []
        for i, lane in enumerate(lanes):
            if not isinstance(lane, Mapping) or set(lane) != set(keys):
                raise ValueError(f"{where}: lane {i} returned {lane!r:.80}, expected a dict with keys {sorted(keys)}")
        return {key: _stack_lanes([lane[key] for lane in lanes], subs.get(key), f"{where}[{key!r}]") for key in keys}
    if kind == "tuple" or (kind is None and isinstance(first, tuple)):
        size = len(first) if isinstance(first, tuple | list) else -1
        for i, lane in enumerate(lanes):
            if not isinstance(lane, tuple | list) or len(lane) != size:
                raise ValueError(f"{where}: lane {i} returned {lane!r:.80}, expected a tuple of {size}")
        subs = spec.spaces if spec is not None else [None] * size
        return tuple(
            _stack_lanes([lane[i] for lane in lanes], subs[i] if i < len(subs) else None, f"{where}[{i}]")
            for i in range(size)
        )
    if kind == "text":
        return tuple(lanes)
    for i, lane in enumerate(lanes):
        if lane is None:
            raise ValueError(f"{where}: lane {i} returned None; expected an action")
    try:
        return np.stack([np.asarray(lane) for lane in lanes])
    except ValueError as error:
        shapes = [np.shape(lane) for lane in lanes]
        raise ValueError(f"{where}: per-lane actions are ragged (shapes {shapes}): {error}") from None


def _lane_leaf(value: Any, lane: int, bridge: Bridge) -> Any:
    if isinstance(value, Tensor):
        return bridge.from_numpy(value.numpy()[lane])
    return value[lane]


def _split_lane(obs: Any, spec: SpaceSpec | None, lane: int, bridge: Bridge) -> Any:
    """Lane ``lane`` of a fused observation tree."""
    kind = spec.kind if spec is not None else None
    if kind == "dict" or (kind is None and isinstance(obs, Mapping)):
        subs = spec.spaces if spec is not None else {}
        return {key: _split_lane(item, subs.get(key), lane, bridge) for key, item in obs.items()}
    if kind == "tuple" or (kind is None and isinstance(obs, tuple)):
        subs = spec.spaces if spec is not None else [None] * len(obs)
        return tuple(_split_lane(item, subs[i], lane, bridge) for i, item in enumerate(obs))
    if kind == "text":
        return obs[lane]
    return _lane_leaf(obs, lane, bridge)


def _add_lane_axis(obs: Any, spec: SpaceSpec | None, bridge: Bridge) -> Any:
    """A one-lane fused observation (leading axis of 1) from a single observation."""
    kind = spec.kind if spec is not None else None
    if kind == "dict" or (kind is None and isinstance(obs, Mapping)):
        subs = spec.spaces if spec is not None else {}
        return {key: _add_lane_axis(item, subs.get(key), bridge) for key, item in obs.items()}
    if kind == "tuple" or (kind is None and isinstance(obs, tuple)):
        subs = spec.spaces if spec is not None else [None] * len(obs)
        return tuple(_add_lane_axis(item, subs[i], bridge) for i, item in enumerate(obs))
    if kind == "text":
        return (obs,)
    if bridge.is_array(obs) and not isinstance(obs, Tensor):
        return obs[None]
    return bridge.from_numpy(np.asarray(bridge.to_numpy(obs) if isinstance(obs, Tensor) else obs)[None])


def _first_lane_count(obs: Any) -> int:
    """The leading axis of the first array leaf (``predict_batch`` called outside ``run``)."""
    if isinstance(obs, Mapping):
        for item in obs.values():
            return _first_lane_count(item)
    if isinstance(obs, tuple | list):
        return _first_lane_count(obs[0]) if obs else 0
    shape = getattr(obs, "shape", None)
    if not shape:
        raise ValueError(f"cannot tell the number of lanes of {obs!r:.80}: expected leaves with a leading axis")
    return int(shape[0])


def _converter(source: Bridge, target: Bridge) -> Callable[[Any], Any]:
    """Re-decode value trees of ``source``'s backend into ``target``'s (Tensors zero-copy)."""
    decode, from_numpy, is_target = target.decode_leaf, target.from_numpy, target.is_array

    def leaf(value: Any) -> Any:
        if value is None or isinstance(value, _PRIMITIVES):
            return value
        if is_target(value):
            return value
        if isinstance(value, Tensor):
            return decode(value)
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, dict):
            return {key: leaf(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(leaf(item) for item in value)
        if isinstance(value, list):
            return [leaf(item) for item in value]
        array = value if isinstance(value, np.ndarray) else np.asarray(source.to_numpy(value))
        return from_numpy(array)

    return leaf


def _describe_space(spec: SpaceSpec) -> str:
    try:
        from rlmesh.spaces import space_from_spec

        return repr(space_from_spec(spec))
    except Exception:  # a spec the client spaces cannot build: show the plain data
        return f"{spec.kind} space {spec.to_dict()!r:.200}"


def _identity(value: Any) -> Any:
    return value


# -- models ----------------------------------------------------------------------------------


class ModelBase(Generic[ObsT, ActT]):
    """A policy over one backend's values; bound to a backend by the class attribute ``bridge``.

    Args:
        predict_fn: ``predict_fn(obs) -> action`` for one observation. Optional when a
            subclass overrides :meth:`predict` or :meth:`predict_batch`, or when
            ``predict_batch_fn`` is given.
        predict_batch_fn: ``predict_batch_fn(obs) -> actions`` for fused observations of a
            vector env (every leaf stacked on a leading ``N`` axis).
        spec: The :class:`~rlmesh.specs.EnvContract` (or a client, whose ``env_contract`` is
            used) the model was made for. ``run`` refuses envs whose observation or action
            space differs; without it the model adopts each env's contract when it runs.
        on_episode_end: Called with each finished :class:`EpisodeResult` during ``run``
            (e.g. to reset a recurrent state).
        on_close: Called once by :meth:`close`.
        device: Where observations are placed before ``predict`` (JAX backend: a
            ``jax.Device`` or a name such as ``"cpu"``, ``"gpu"``, ``"cuda:1"``; NumPy and
            plain backends: None or ``"cpu"``).
        vmap: Derive :meth:`predict_batch` from :meth:`predict` with ``jax.vmap`` (JAX
            backend only; ``predict`` must be traceable). Otherwise a vector env without a
            ``predict_batch`` calls ``predict`` once per lane and stacks the actions.

    Subclass hooks: :meth:`load` (runs once, before the first prediction), :meth:`predict`,
    :meth:`predict_batch`, :meth:`on_episode_end`, :meth:`close`.

    Raises:
        TypeError: no way to predict was given.
        ValueError: a ``device`` the backend cannot use, or ``vmap`` off the JAX backend.
    """

    bridge: ClassVar[Bridge] = TENSOR_BRIDGE

    def __init__(
        self,
        predict_fn: Callable[[ObsT], ActT] | None = None,
        *,
        predict_batch_fn: Callable[[ObsT], ActT] | None = None,
        spec: EnvContract | Any | None = None,
        on_episode_end: Callable[[EpisodeResult], None] | None = None,
        on_close: Callable[[], None] | None = None,
        device: Any = None,
        vmap: bool = False,
    ) -> None:
        for name, fn in (
            ("predict_fn", predict_fn),
            ("predict_batch_fn", predict_batch_fn),
            ("on_episode_end", on_episode_end),
            ("on_close", on_close),
        ):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__} {fn!r:.80}")
        cls = type(self)
        self._overrides_predict = cls.predict is not ModelBase.predict
        self._overrides_batch = cls.predict_batch is not ModelBase.predict_batch
        if predict_fn is None and predict_batch_fn is None and not (self._overrides_predict or self._overrides_batch):
            raise TypeError(
                f"{cls.__name__} needs predict_fn (obs -> action) or predict_batch_fn, or a subclass "
                "overriding predict(obs) and/or predict_batch(obs)"
            )
        self._predict_fn = predict_fn
        self._predict_batch_fn = predict_batch_fn
        self._on_episode_end = on_episode_end
        self._on_close = on_close
        self._declared = _as_contract(spec)
        self._contract: EnvContract | None = self._declared
        self._num_envs: int | None = None
        self._loaded = False
        self._closed = False
        is_jax = self.bridge.name == "jax"
        if vmap and not is_jax:
            raise ValueError(
                f"vmap=True derives predict_batch with jax.vmap; use rlmesh.jax.Model, not {cls.__name__} "
                f"of the {self.bridge.name!r} backend"
            )
        if device is not None and not is_jax and device != "cpu":
            raise ValueError(
                f"device {device!r}: the {self.bridge.name!r} backend keeps observations on the host; "
                "pass None or 'cpu' (use rlmesh.jax.Model to place them on an accelerator)"
            )
        self._vmap = vmap
        self._vmapped: Callable[[Any], Any] | None = None
        self._device_request = device
        self._device: Any = None
        self._action_checks: dict[tuple[SpaceSpec, int | None], Callable[[Any], None]] = {}

    # -- contract ---------------------------------------------------------------------------
    @property
    def spec(self) -> EnvContract | None:
        """The declared contract, else the contract of the env the model last ran on."""
        return self._contract

    @property
    def observation_space(self) -> Space[ObsT] | None:
        """The observation space (one lane) in this backend's values, when the spec is known."""
        from rlmesh.spaces import space_from_spec

        return None if self._contract is None else space_from_spec(self._contract.observation_space, self.bridge)

    @property
    def action_space(self) -> Space[ActT] | None:
        """The action space (one lane) in this backend's values, when the spec is known."""
        from rlmesh.spaces import space_from_spec

        return None if self._contract is None else space_from_spec(self._contract.action_space, self.bridge)

    @property
    def device(self) -> Any:
        """The device observations are placed on (resolved on first use), or None."""
        if self._device is None and self._device_request is not None:
            self._device = _resolve_device(self._device_request, self.bridge)
        return self._device

    def _bind(self, contract: EnvContract) -> None:
        """Adopt an env's contract for a run; refuse one that differs from the declared spec."""
        declared = self._declared
        if declared is not None:
            for what in ("observation_space", "action_space"):
                mine, theirs = getattr(declared, what), getattr(contract, what)
                if mine != theirs:
                    raise ValueError(
                        f"{type(self).__name__} was made for {what.replace('_', ' ')} {_describe_space(mine)} "
                        f"({declared.id}) but the env {contract.id} has {_describe_space(theirs)}"
                    )
        self._contract = contract if declared is None else declared
        self._num_envs = contract.num_envs
        self._checker(contract.num_envs)  # build the action check now, outside timed steps

    # -- lifecycle --------------------------------------------------------------------------
    def load(self) -> None:
        """Hook: load weights or compile; runs once, before the first prediction."""

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()
            self._loaded = True

    def on_episode_end(self, episode: EpisodeResult) -> None:
        """Hook: called with every finished episode during :meth:`run`."""
        if self._on_episode_end is not None:
            self._on_episode_end(episode)

    def close(self) -> None:
        """Release the model (calls ``on_close`` once). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:
            self._on_close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- prediction -------------------------------------------------------------------------
    def predict(self, obs: ObsT) -> ActT:
        """The action for one observation (override, or pass ``predict_fn``).

        Without ``predict_fn`` but with a ``predict_batch``, the observation is given a
        leading axis of 1 and lane 0 of the batch result is returned.
        """
        if self._predict_fn is not None:
            return self._predict_fn(obs)
        fused = _add_lane_axis(obs, self._observation_spec(), self.bridge)
        batch = _batched_to_numpy(self.predict_batch(fused), self._action_spec(), 1)
        return _split_lane(batch, self._action_spec(), 0, self.bridge)

    def predict_batch(self, obs: ObsT) -> ActT:
        """Actions for fused observations (every leaf with a leading ``N`` axis).

        Returns a batch whose leaves have leading axis ``N``, or a list of ``N`` per-lane
        actions. By default: ``predict_batch_fn``, else ``jax.vmap(predict)`` when asked
        for, else ``predict`` once per lane.
        """
        if self._predict_batch_fn is not None:
            return self._predict_batch_fn(obs)
        if self._vmap:
            if self._vmapped is None:
                import jax

                self._vmapped = jax.vmap(self.predict)
            return self._vmapped(obs)
        if not (self._predict_fn is not None or self._overrides_predict):
            raise TypeError(f"{type(self).__name__} has no predict or predict_batch")
        lanes = self._num_envs if self._num_envs is not None else _first_lane_count(obs)
        spec = self._observation_spec()
        actions = [
            _tree_to_numpy(
                self.predict(_split_lane(obs, spec, i, self.bridge)), self._action_spec(), f"action of lane {i}"
            )
            for i in range(lanes)
        ]
        return _stack_lanes(actions, self._action_spec())

    def __call__(self, obs: ObsT) -> ActT:
        """``predict(obs)`` after loading and device placement."""
        self._ensure_loaded()
        return self.predict(self._place(obs))

    def _observation_spec(self) -> SpaceSpec | None:
        return None if self._contract is None else self._contract.observation_space

    def _action_spec(self) -> SpaceSpec | None:
        return None if self._contract is None else self._contract.action_space

    def _place(self, obs: Any) -> Any:
        device = self.device
        if device is None or self.bridge.name != "jax":
            return obs
        import jax

        return jax.device_put(obs, device)

    def _observation_converter(self, source: Bridge) -> Callable[[Any], Any]:
        """Identity for envs of this backend, else a re-decoding tree map."""
        return _identity if source is self.bridge else _converter(source, self.bridge)

    def _checker(self, num_envs: int | None) -> Callable[[Any], None] | None:
        spec = self._action_spec()
        if spec is None:
            return None
        key = (spec, num_envs)
        check = self._action_checks.get(key)
        if check is None:
            from rlmesh.checks import make_action_checker

            check = self._action_checks[key] = make_action_checker(spec, num_envs=num_envs)
        return check

    def _invalid(self, error: ValueError, action: Any, num_envs: int | None) -> InvalidActionError:
        spec = self._action_spec()
        contract = self._contract
        where = f" for {contract.id}" if contract is not None else ""
        lanes = f" ({num_envs} lanes, batched)" if num_envs is not None else ""
        space = _describe_space(spec) if spec is not None else "unknown"
        method = "predict_batch" if num_envs is not None else "predict"
        return InvalidActionError(
            f"{type(self).__name__}.{method} returned an invalid action{where}: {error}; "
            f"the action space is {space}{lanes}; the action was {action!r:.200}"
        )

    def _act(self, obs: Any) -> Any:
        """One step: place, predict, convert to NumPy, check against the action space."""
        action = self.predict(self._place(obs))
        try:
            converted = _tree_to_numpy(action, self._action_spec())
            check = self._checker(None)
            if check is not None:
                check(converted)
        except ValueError as error:
            raise self._invalid(error, action, None) from None
        return converted

    def _act_batch(self, obs: Any, num_envs: int) -> Any:
        """One vector step: one ``predict_batch`` call on the fused observations."""
        actions = self.predict_batch(self._place(obs))
        batch = _batched_to_numpy(actions, self._action_spec(), num_envs)
        check = self._checker(num_envs)
        if check is not None:
            try:
                check(batch)
            except ValueError as error:
                raise self._invalid(error, actions, num_envs) from None
        return batch

    # -- evaluation -------------------------------------------------------------------------
    def run(
        self,
        env: Any,
        *,
        seeds: Sequence[int | None] | None = None,
        max_episodes: int | None = None,
        max_episode_steps: int | None = None,
        progress: bool | None = None,
        curve_server_key: KeySource | None = None,
        curve_secret_key: str | os.PathLike[str] | None = None,
    ) -> RunResult:
        """Play and measure episodes of ``env``; see :func:`rlmesh.evaluation.evaluate`.

        Args:
            env: Endpoint address, rlmesh client of any backend, sandbox env, or local
                Gymnasium env / vector env.
            seeds: Reset seeds, one per episode (vector envs: per lane, in chunks of lanes).
            max_episodes: Episodes to play; default one per seed, else one.
            max_episode_steps: Steps after which an episode ends as truncated (default
                100,000, so a policy that never finishes cannot hang the run).
            progress: tqdm progress bar; default when stderr is a terminal.
            curve_server_key: With an address: the server's CURVE public key (z85 or file).
            curve_secret_key: With an address: this client's CURVE secret certificate file.

        Returns:
            A frozen :class:`RunResult`.
        """
        return evaluate(
            self,
            env,
            seeds=seeds,
            max_episodes=max_episodes,
            max_episode_steps=max_episode_steps,
            progress=progress,
            curve_server_key=curve_server_key,
            curve_secret_key=curve_secret_key,
        )

    def __repr__(self) -> str:
        fn = self._predict_fn or self._predict_batch_fn
        what = getattr(fn, "__qualname__", type(fn).__name__) if fn is not None else "subclass"
        return f"{type(self).__name__}({what}, backend={self.bridge.name!r})"


def _as_contract(spec: Any) -> EnvContract | None:
    if spec is None or isinstance(spec, EnvContract):
        return spec
    contract = getattr(spec, "env_contract", None)
    if isinstance(contract, EnvContract):
        return contract
    raise TypeError(f"spec must be an rlmesh EnvContract (e.g. client.env_contract) or None, got {type(spec).__name__}")


def _resolve_device(request: Any, bridge: Bridge) -> Any:
    if bridge.name != "jax":
        return None
    import jax

    if not isinstance(request, str):
        return request
    platform, _, index = request.partition(":")
    platform = {"cuda": "gpu", "rocm": "gpu"}.get(platform, platform)
    try:
        devices = jax.devices(platform)
        return devices[int(index or 0)]
    except (RuntimeError, IndexError, ValueError) as error:
        raise ValueError(f"device {request!r} is not available to JAX ({error}); devices: {jax.devices()}") from None


@final
class Model(ModelBase[Any, Any]):
    """A model of the plain backend: ``predict`` receives :class:`~rlmesh.tensor.Tensor` leaves.

    See :class:`ModelBase` for the arguments; use ``rlmesh.numpy.Model`` or
    ``rlmesh.jax.Model`` to receive NumPy or JAX arrays.
    """

    bridge = TENSOR_BRIDGE


# -- random baseline -------------------------------------------------------------------------


class _RandomSample:
    """The ``RANDOM_SAMPLE`` sentinel: ``rlmesh.run(RANDOM_SAMPLE, env)`` samples actions."""

    _instance: _RandomSample | None = None

    def __new__(cls) -> _RandomSample:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "RANDOM_SAMPLE"

    def __reduce__(self) -> str:
        return "RANDOM_SAMPLE"


RANDOM_SAMPLE: Any = _RandomSample()
"""Pass to :func:`run` instead of a model for a uniformly random baseline (``action_space.sample()``)."""


class _RandomModel(ModelBase[Any, Any]):
    """Samples the action space; observations are left in the env's own values."""

    def __init__(self, seed: int | None) -> None:
        super().__init__()
        self._seed = seed
        self._space: Any = None
        self._batched: Any = None

    def _observation_converter(self, source: Bridge) -> Callable[[Any], Any]:
        return _identity

    def load(self) -> None:
        from rlmesh.bridges import NUMPY_BRIDGE
        from rlmesh.spaces import batch_spec, space_from_spec

        assert self._contract is not None
        self._space = space_from_spec(self._contract.action_space, NUMPY_BRIDGE, seed=self._seed)
        if self._num_envs is not None:
            spec = batch_spec(self._contract.action_space, self._num_envs)
            self._batched = space_from_spec(spec, NUMPY_BRIDGE, seed=self._seed)

    def predict(self, obs: Any) -> Any:
        return self._space.sample()

    def predict_batch(self, obs: Any) -> Any:
        return self._batched.sample()


def run(
    model: ModelBase[Any, Any] | Any,
    env: Any,
    *,
    seeds: Sequence[int | None] | None = None,
    max_episodes: int | None = None,
    max_episode_steps: int | None = None,
    progress: bool | None = None,
    curve_server_key: KeySource | None = None,
    curve_secret_key: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Evaluate ``model`` (or the :data:`RANDOM_SAMPLE` baseline) on ``env``.

    Same as ``model.run(env, ...)``; with ``RANDOM_SAMPLE`` the actions are uniform samples of
    the env's action space, seeded with the first non-None seed (so runs with the same seeds
    repeat exactly). Given an address, ``curve_server_key``/``curve_secret_key`` reach the
    client it opens, as in ``RemoteEnv``.

    Raises:
        TypeError: ``model`` is neither a model nor ``RANDOM_SAMPLE``.
    """
    if model is RANDOM_SAMPLE:
        first = next((seed for seed in (seeds or ()) if seed is not None), None)
        model = _RandomModel(None if first is None else int(first))
    elif not isinstance(model, ModelBase):
        raise TypeError(
            f"run() expects an rlmesh model (e.g. rlmesh.numpy.Model(predict_fn)) or RANDOM_SAMPLE, "
            f"got {type(model).__name__} {model!r:.80}"
        )
    return model.run(
        env,
        seeds=seeds,
        max_episodes=max_episodes,
        max_episode_steps=max_episode_steps,
        progress=progress,
        curve_server_key=curve_server_key,
        curve_secret_key=curve_secret_key,
    )
