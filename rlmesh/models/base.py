"""The model base: a policy in one backend's values, checked against the env's contract.

:class:`ModelBase` holds all model behaviour and is generic over the observation and action
types; each backend declares its ``Model`` over it (``rlmesh.Model`` with Tensor leaves,
``rlmesh.numpy.Model`` with NumPy arrays, ``rlmesh.jax.Model`` with JAX arrays).

Observations reach ``predict`` / ``predict_batch`` in the model's backend whatever the env's
backend is. Actions may be backend arrays, NumPy arrays or Python values; they are converted
to NumPy and checked against the env's action space before they are sent, so a bad action is
a local :class:`~rlmesh.errors.InvalidActionError` naming the leaf, the lane and the space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar, Unpack

import numpy as np

from rlmesh.bridges import TENSOR_BRIDGE, Bridge, converter, host_tree
from rlmesh.checks import Checker, make_action_checker
from rlmesh.errors import InvalidActionError, missing_extra
from rlmesh.models.evaluation import RunOptions, evaluate
from rlmesh.models.results import EpisodeResult, RunResult
from rlmesh.specs import EnvContract, SpaceSpec, TupleSpec
from rlmesh.tensor import Tensor

if TYPE_CHECKING:
    from rlmesh.spaces import Space

__all__ = ["ModelBase"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")


def _space_utils() -> Any:
    """Gymnasium's vector space utilities (``iterate``, ``concatenate``, ...)."""
    try:
        from gymnasium.vector import utils
    except ImportError as error:
        raise missing_extra("gymnasium", "gymnasium") from error
    return utils


def _gymnasium_space(spec: SpaceSpec) -> Any:
    from rlmesh.spaces import to_gymnasium_space

    return to_gymnasium_space(spec)


def _describe_space(spec: SpaceSpec) -> str:
    try:
        from rlmesh.spaces import space_from_spec

        return repr(space_from_spec(spec))
    except Exception:  # a spec the client spaces cannot build: show the plain data
        return f"{spec.kind} space {spec.to_dict()!r:.200}"


def _lane_count(value: Any) -> int:
    """The leading axis of the first leaf of a batched tree."""
    if isinstance(value, dict):
        return _lane_count(next(iter(value.values())))
    if isinstance(value, tuple | list) and value and not isinstance(value[0], str):
        return _lane_count(value[0])
    if isinstance(value, tuple | list):
        return len(value)
    shape = getattr(value, "shape", None)
    if not shape:
        raise ValueError(f"cannot tell the number of lanes of {value!r:.80}: expected leaves with a leading axis")
    return int(shape[0])


def _as_contract(spec: Any) -> EnvContract | None:
    if spec is None or isinstance(spec, EnvContract):
        return spec
    contract = getattr(spec, "env_contract", None)
    if isinstance(contract, EnvContract):
        return contract
    raise TypeError(f"spec must be an rlmesh EnvContract (e.g. client.env_contract) or None, got {type(spec).__name__}")


class ModelBase(Generic[ObsT, ActT]):
    """A policy over one backend's values; evaluate it with :meth:`run`.

    Args:
        predict_fn: ``predict_fn(obs) -> action`` for one observation. Optional when a
            subclass overrides :meth:`predict` or :meth:`predict_batch`, or when
            ``predict_batch_fn`` is given.
        predict_batch_fn: ``predict_batch_fn(obs) -> actions`` for fused observations of a
            vector env (every leaf stacked on a leading ``N`` axis).
        spec: The :class:`~rlmesh.specs.EnvContract` (or a client, whose ``env_contract`` is
            used) the model was made for. ``run`` refuses envs whose observation or action
            space differs; without it the model adopts each env's contract when it runs.
        on_episode_end: Called with each finished :class:`~rlmesh.models.EpisodeResult`
            during ``run`` (e.g. to reset a recurrent state).
        on_close: Called once by :meth:`close`.
        device: Where observations are placed before ``predict`` (JAX backend: a
            ``jax.Device`` or a name such as ``"cpu"``, ``"gpu"``, ``"cuda:1"``; other
            backends: None or ``"cpu"``).
        vmap: Derive :meth:`predict_batch` from :meth:`predict` with the backend's vectorising
            transform (``jax.vmap``; ``predict`` must be traceable). Otherwise a vector env
            without a ``predict_batch`` calls ``predict`` once per lane and stacks the actions.

    Subclass hooks: :meth:`load` (runs once, before the first prediction), :meth:`predict`,
    :meth:`predict_batch`, :meth:`on_episode_end`, :meth:`close`.

    Raises:
        TypeError: no way to predict was given.
        ValueError: a ``device`` the backend cannot use, or ``vmap`` on a backend without it.

    Example:
        >>> model = rlmesh.numpy.Model(lambda obs: int(obs[2] > 0))  # doctest: +SKIP
        >>> print(model.run("tcp://127.0.0.1:5555", seeds=range(20)).summary())  # doctest: +SKIP
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
        hooks = {
            "predict_fn": predict_fn,
            "predict_batch_fn": predict_batch_fn,
            "on_episode_end": on_episode_end,
            "on_close": on_close,
        }
        for name, fn in hooks.items():
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {type(fn).__name__} {fn!r:.80}")
        cls = type(self)
        self._overrides_predict = cls.predict is not ModelBase.predict
        overrides_batch = cls.predict_batch is not ModelBase.predict_batch
        if predict_fn is None and predict_batch_fn is None and not (self._overrides_predict or overrides_batch):
            raise TypeError(
                f"{cls.__name__} needs predict_fn (obs -> action) or predict_batch_fn, or a subclass "
                "overriding predict(obs) and/or predict_batch(obs)"
            )
        if vmap and self.bridge.vmap is None:
            raise ValueError(
                f"vmap=True derives predict_batch with jax.vmap; use rlmesh.jax.Model, not {cls.__name__} "
                f"of the {self.bridge.name!r} backend"
            )
        if self.bridge.resolve_device is None:
            self.bridge.device_for(device)  # refuses accelerators now, not at the first step
        self._predict_fn = predict_fn
        self._predict_batch_fn = predict_batch_fn
        self._on_episode_end = on_episode_end
        self._on_close = on_close
        self._declared = _as_contract(spec)
        self._contract: EnvContract | None = self._declared
        self._num_envs: int | None = None
        self._loaded = False
        self._closed = False
        self._vmap = vmap
        self._vmapped: Callable[[Any], Any] | None = None
        self._device_request = device
        self._device: Any = None
        self._gym_spaces: dict[tuple[SpaceSpec, int | None], Any] = {}

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
            self._device = self.bridge.device_for(self._device_request)
        return self._device

    def prepare(self, contract: EnvContract) -> None:
        """Adopt an env's contract and load the model (once), ready for :meth:`act`.

        Raises:
            ValueError: the contract's spaces differ from the declared ``spec``.
        """
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
        self._action_check(contract.num_envs)  # built now, outside the timed steps
        self._ensure_loaded()

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
        utils, spec = _space_utils(), self._require_contract()
        space = self._gym_space(spec.observation_space, None)
        fused = utils.concatenate(space, [host_tree(obs)], utils.create_empty_array(space, 1))
        batch = self._host_batch(self.predict_batch(self._to_backend(fused)), 1)
        return next(utils.iterate(self._gym_space(spec.action_space, 1), batch))

    def predict_batch(self, obs: ObsT) -> ActT:
        """Actions for fused observations (every leaf with a leading ``N`` axis).

        Returns a batch whose leaves have leading axis ``N``, or a list of ``N`` per-lane
        actions. By default: ``predict_batch_fn``, else the vmapped ``predict`` when asked
        for, else ``predict`` once per lane.
        """
        if self._predict_batch_fn is not None:
            return self._predict_batch_fn(obs)
        if self._vmap:
            if self._vmapped is None:
                assert self.bridge.vmap is not None
                self._vmapped = self.bridge.vmap(self.predict)
            return self._vmapped(obs)
        if not (self._predict_fn is not None or self._overrides_predict):
            raise TypeError(f"{type(self).__name__} has no predict or predict_batch")
        lanes = [host_tree(self.predict(lane)) for lane in self._observation_lanes(obs)]
        return self._stack(lanes)

    def __call__(self, obs: ObsT) -> ActT:
        """``predict(obs)`` after loading and device placement."""
        self._ensure_loaded()
        return self.predict(self._place(obs))

    # -- stepping (used by the evaluation loops) ----------------------------------------------
    def observation_converter(self, source: Bridge) -> Callable[[Any], Any]:
        """A function re-decoding observations of ``source``'s backend into this model's."""
        return converter(source, self.bridge)

    def act(self, obs: ObsT) -> Any:
        """One step: place, predict, convert the action to NumPy and check it.

        Raises:
            InvalidActionError: the action is outside the action space (names the space).
        """
        action = self.predict(self._place(obs))
        converted = host_tree(action)
        check = self._action_check(None)
        if check is not None:
            try:
                check(converted)
            except ValueError as error:
                raise self._invalid(error, action, None) from None
        return converted

    def act_batch(self, obs: ObsT) -> Any:
        """One vector step: one ``predict_batch`` call on the fused observations, checked.

        Raises:
            InvalidActionError: the batch is outside the batched action space (names the lane).
        """
        num_envs = self._num_envs if self._num_envs is not None else _lane_count(obs)
        actions = self.predict_batch(self._place(obs))
        try:
            batch = self._host_batch(actions, num_envs)
            check = self._action_check(num_envs)
            if check is not None:
                check(batch)
        except ValueError as error:
            raise self._invalid(error, actions, num_envs) from None
        return batch

    # -- internals --------------------------------------------------------------------------
    def _require_contract(self) -> EnvContract:
        if self._contract is None:
            raise ValueError(
                f"{type(self).__name__} needs the env's spaces for this: pass spec=client.env_contract "
                "or run it on an env first"
            )
        return self._contract

    def _gym_space(self, spec: SpaceSpec, num_envs: int | None) -> Any:
        key = (spec, num_envs)
        space = self._gym_spaces.get(key)
        if space is None:
            space = _gymnasium_space(spec)
            if num_envs is not None:
                space = _space_utils().batch_space(space, num_envs)
            self._gym_spaces[key] = space
        return space

    def _observation_lanes(self, obs: Any) -> Iterator[Any]:
        """The lanes of fused observations, in this backend's values."""
        spec = self._require_contract().observation_space
        host = self._host_leaves(obs)
        lanes = self._num_envs if self._num_envs is not None else _lane_count(obs)
        for lane in _space_utils().iterate(self._gym_space(spec, lanes), host):
            yield self._to_backend(lane)

    def _host_leaves(self, value: Any) -> Any:
        """Tensor leaves as NumPy views (other backends' arrays iterate as they are)."""
        if isinstance(value, dict):
            return {key: self._host_leaves(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(self._host_leaves(item) for item in value)
        return value.numpy() if isinstance(value, Tensor) else value

    def _to_backend(self, value: Any) -> Any:
        """NumPy leaves of a tree as this backend's values."""
        if isinstance(value, dict):
            return {key: self._to_backend(item) for key, item in value.items()}
        if isinstance(value, tuple):
            return tuple(self._to_backend(item) for item in value)
        if isinstance(value, np.ndarray | np.generic) and not self.bridge.is_array(value):
            return self.bridge.from_numpy(np.asarray(value))
        return value

    def _host_batch(self, actions: Any, num_envs: int) -> Any:
        """A batched action in NumPy; a list of per-lane actions is stacked like Gymnasium does."""
        spec = self._require_contract().action_space
        if actions is None:
            raise ValueError(f"predict_batch returned None; expected one action per lane ({num_envs} lanes)")
        if not isinstance(actions, list) or isinstance(spec, TupleSpec):
            return host_tree(actions)
        if len(actions) != num_envs:
            raise ValueError(
                f"predict_batch returned a list of {len(actions)} actions; expected one per lane ({num_envs} lanes)"
            )
        return self._stack([host_tree(lane) for lane in actions])

    def _stack(self, lanes: list[Any]) -> Any:
        """Per-lane NumPy actions stacked on a leading lane axis, as Gymnasium's ``concatenate`` does."""
        utils, space = _space_utils(), self._gym_space(self._require_contract().action_space, None)
        try:
            return utils.concatenate(space, lanes, utils.create_empty_array(space, len(lanes)))
        except (TypeError, ValueError, KeyError, IndexError) as error:
            raise ValueError(f"the per-lane actions {lanes!r:.120} do not stack into one batch: {error}") from None

    def _place(self, obs: Any) -> Any:
        device = self.device
        if device is None or self.bridge.place is None:
            return obs
        return self.bridge.place(obs, device)

    def _action_check(self, num_envs: int | None) -> Checker | None:
        spec = self._contract.action_space if self._contract is not None else None
        return None if spec is None else make_action_checker(spec, num_envs=num_envs)

    def _invalid(self, error: ValueError, action: Any, num_envs: int | None) -> InvalidActionError:
        contract = self._contract
        where = f" for {contract.id}" if contract is not None else ""
        space = _describe_space(contract.action_space) if contract is not None else "unknown"
        lanes = f" ({num_envs} lanes, batched)" if num_envs is not None else ""
        method = "predict_batch" if num_envs is not None else "predict"
        return InvalidActionError(
            f"{type(self).__name__}.{method} returned an invalid action{where}: {error}; "
            f"the action space is {space}{lanes}; the action was {action!r:.200}"
        )

    # -- evaluation -------------------------------------------------------------------------
    def run(self, env: Any, **options: Unpack[RunOptions]) -> RunResult:
        """Play and measure episodes of ``env``; see :func:`rlmesh.models.evaluate`.

        Args:
            env: Endpoint address, rlmesh client of any backend, sandbox env, or local
                Gymnasium env / vector env.
            **options: :class:`~rlmesh.models.RunOptions`: ``seeds`` (one per episode;
                vector envs: per lane, in chunks of lanes), ``max_episodes``,
                ``max_episode_steps`` (default 100,000), ``progress`` (tqdm bar; default when
                stderr is a terminal), ``curve_server_key``/``curve_secret_key`` (with an
                address, as in ``RemoteEnv``).

        Returns:
            A frozen :class:`~rlmesh.models.RunResult`.
        """
        return evaluate(self, env, **options)

    def __repr__(self) -> str:
        fn = self._predict_fn or self._predict_batch_fn
        what = getattr(fn, "__qualname__", type(fn).__name__) if fn is not None else "subclass"
        return f"{type(self).__name__}({what}, backend={self.bridge.name!r})"
