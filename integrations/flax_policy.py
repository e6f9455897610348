"""Flax policies as rlmesh models: Linen modules, NNX modules and bare ``apply_fn``s.

Three constructors return a :class:`FlaxPolicy`, an ``rlmesh`` model of the JAX backend that
``run()`` evaluates on any environment (address, client of any backend, sandbox, local env)::

    from rlmesh.integrations.flax_policy import from_apply_fn, from_linen, from_nnx

    policy = from_linen(module, variables)                # (a) Linen module + its variables
    policy = from_nnx(nnx_module)                         # (b) NNX module (split into graph + state)
    policy = from_apply_fn(apply_fn, params)              # (c) apply_fn(params, obs[, rng])
    result = policy.run("tcp://127.0.0.1:5555", seeds=range(20), progress=True)

What the network returns, per action space:

* ``Discrete(n)``: logits of shape ``(n,)``. Deterministic: ``argmax``; stochastic:
  ``jax.random.categorical``. ``start`` is added.
* ``Box``: the mean of the action's shape, or ``(mean, log_std)``. Deterministic: the mean;
  stochastic: ``mean + exp(log_std) * normal`` (``log_std`` from the network, else the
  ``log_std=`` argument). Both are clipped to the bounds and cast to the space's dtype.
* Anything else: pass ``select_fn(output, key) -> action``.

Compilation. The policy owns two jitted functions, ``step(params, obs, key)`` for one
observation and ``step_batch(params, obs, key)`` (``jax.vmap`` of the network over the lane
axis, one call per vector step). Parameters and the PRNG key are *arguments*, never closed
over, so assigning new parameters of the same shapes (``policy.params = new_params`` or
:meth:`FlaxPolicy.update_params`) reuses the compiled code. Each function is traced once per
observation shape/dtype: :attr:`FlaxPolicy.trace_counts` counts traces, and ``max_traces=n``
wraps both in ``chex.assert_max_traces`` so a re-trace raises. Inside each trace the input
pytree is validated against the observation space by rlmesh's checker (tree structure, leaf
shapes, dtype kinds), so a mismatch is a clear error at the first step and costs nothing afterwards.

Randomness. Stochastic policies thread a PRNG key: every step splits ``policy.key`` into a
new carry and a step key (batched steps split the step key once more per lane), so runs from
the same ``seed`` repeat exactly. An ``apply_fn`` that takes a third argument receives a key
too (dropout, noisy layers); Linen modules get one per ``rng_collections`` name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rlmesh._jax_bridge import JAX_BRIDGE, JaxValue
from rlmesh.checks import make_observation_checker
from rlmesh.models import EpisodeResult, ModelBase
from rlmesh.specs import BoxSpec, DictSpec, DiscreteSpec, EnvContract, SpaceSpec, TextSpec, TupleSpec

__all__ = ["FlaxPolicy", "from_apply_fn", "from_linen", "from_nnx"]

ApplyFn = Callable[[Any, Any, jax.Array], Any]
"""The internal network signature: ``apply(params, obs, key) -> output``."""


# -- action selection --------------------------------------------------------------------------


@functools.singledispatch
def _selector(spec: SpaceSpec, deterministic: bool, log_std: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """``select(output, key) -> action`` for one lane."""
    raise ValueError(
        f"FlaxPolicy selects actions for Discrete and Box spaces, not {spec.kind}; pass "
        "select_fn(output, key) -> action for this action space"
    )


@_selector.register
def _(spec: DiscreteSpec, deterministic: bool, log_std: Any) -> Callable[[Any, jax.Array], jax.Array]:
    start, n = spec.start, spec.n

    def discrete(output: Any, key: jax.Array) -> jax.Array:
        logits = output[0] if isinstance(output, tuple | list) else output
        chex.assert_shape(logits, (n,))
        index = jnp.argmax(logits, axis=-1) if deterministic else jax.random.categorical(key, logits, axis=-1)
        return (index + start).astype(jnp.int32)

    return discrete


@_selector.register
def _(spec: BoxSpec, deterministic: bool, log_std: Any) -> Callable[[Any, jax.Array], jax.Array]:
    shape = spec.shape
    low = np.broadcast_to(np.asarray(spec.low, np.float64), shape).astype(np.float32)
    high = np.broadcast_to(np.asarray(spec.high, np.float64), shape).astype(np.float32)
    dtype = jax.dtypes.canonicalize_dtype(np.dtype(spec.dtype))  # float64 -> float32 without x64
    fixed_log_std = None if log_std is None else np.asarray(log_std, np.float32)

    def box(output: Any, key: jax.Array) -> jax.Array:
        if isinstance(output, tuple | list):
            mean, scale = output[0], (output[1] if len(output) > 1 else fixed_log_std)
        else:
            mean, scale = output, fixed_log_std
        chex.assert_shape(mean, shape)
        action = mean
        if not deterministic:
            if scale is None:
                raise ValueError(
                    "stochastic Box actions need a log standard deviation: return (mean, log_std) "
                    "from the network or pass log_std= to the policy"
                )
            action = mean + jnp.exp(scale) * jax.random.normal(key, shape, jnp.result_type(mean))
        return jnp.clip(action, low, high).astype(dtype)

    return box


# -- the model -----------------------------------------------------------------------------------


class FlaxPolicy(ModelBase[JaxValue, JaxValue]):
    """A jitted Flax (or any JAX) network as an rlmesh model of the JAX backend.

    Prefer :func:`from_linen`, :func:`from_nnx` and :func:`from_apply_fn`.

    Args:
        apply: ``apply(params, obs, key) -> output`` for one (unbatched) observation.
        params: The parameter pytree passed to ``apply`` (an argument of the jitted
            functions: updating it does not recompile).
        spec: The env contract the policy is for; default: the env's, when it runs.
        deterministic: ``argmax``/mean actions (True) or sampled actions (False).
        seed: Seed of the PRNG key threaded through the steps.
        log_std: Log standard deviation for stochastic Box actions when the network returns
            only a mean.
        select_fn: ``select_fn(output, key) -> action`` replacing the built-in selection.
        max_traces: Wrap the step functions in ``chex.assert_max_traces(n=max_traces)``.
        device: Device for observations and parameters (``jax.Device`` or a name).
        on_episode_end: Called with each finished :class:`~rlmesh.models.EpisodeResult`.
        on_close: Called once by :meth:`close`.
        param_transform: Applied to parameters given to :meth:`update_params` (NNX: module
            to state).

    Attributes:
        params: The current parameters (assign or use :meth:`update_params`).
        key: The current PRNG key.
        trace_counts: ``{"predict": traces, "predict_batch": traces}`` of the jitted steps.
    """

    bridge = JAX_BRIDGE

    def __init__(
        self,
        apply: ApplyFn,
        params: Any,
        *,
        spec: EnvContract | Any | None = None,
        deterministic: bool = True,
        seed: int = 0,
        log_std: Any = None,
        select_fn: Callable[[Any, jax.Array], Any] | None = None,
        max_traces: int | None = None,
        device: Any = None,
        on_episode_end: Callable[[EpisodeResult], None] | None = None,
        on_close: Callable[[], None] | None = None,
        param_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        if not callable(apply):
            raise TypeError(f"apply must be callable, got {type(apply).__name__}")
        if max_traces is not None and (not isinstance(max_traces, int) or max_traces < 1):
            raise ValueError(f"max_traces must be a positive int or None, got {max_traces!r}")
        super().__init__(spec=spec, on_episode_end=on_episode_end, on_close=on_close, device=device)
        self._apply = apply
        self._param_transform = param_transform
        self.params = params
        self.deterministic = bool(deterministic)
        self.key = jax.random.key(seed)
        self._log_std = log_std
        self._select_fn = select_fn
        self._max_traces = max_traces
        self.trace_counts = {"predict": 0, "predict_batch": 0}
        self._compiled_for: tuple[SpaceSpec, SpaceSpec] | None = None
        self._step: Callable[..., Any] | None = None
        self._step_batch: Callable[..., Any] | None = None

    @property
    def trace_count(self) -> int:
        """Traces of both step functions together."""
        return sum(self.trace_counts.values())

    def update_params(self, params: Any) -> None:
        """Use new parameters (same structure and shapes: no recompilation)."""
        if self._param_transform is not None:
            params = self._param_transform(params)
        self.params = params if self.device is None else jax.device_put(params, self.device)

    def load(self) -> None:
        """Place the parameters on ``device`` and build the jitted steps."""
        if self.device is not None:
            self.params = jax.device_put(self.params, self.device)
        if self.spec is not None:
            self._compile()

    def _compile(self) -> None:
        contract = self.spec
        if contract is None:
            raise ValueError(
                "FlaxPolicy needs the env's spaces to pick actions: pass spec=client.env_contract or "
                "call run(env) first"
            )
        key = (contract.observation_space, contract.action_space)
        if self._compiled_for == key:
            return
        obs_spec, act_spec = key
        if _has_text(obs_spec):
            raise ValueError("FlaxPolicy cannot jit Text observations; use rlmesh.jax.Model with a Python predict")
        # Structure, shapes and dtype kinds only: the observations are traced here.
        check_one = make_observation_checker(obs_spec, bounds=False)
        select = self._select_fn or _selector(act_spec, self.deterministic, self._log_std)
        apply, counts = self._apply, self.trace_counts

        def step(params: Any, obs: Any, key: jax.Array) -> tuple[Any, jax.Array]:
            counts["predict"] += 1  # runs at trace time only
            check_one(obs)
            key, apply_key, select_key = jax.random.split(key, 3)
            return select(apply(params, obs, apply_key), select_key), key

        def step_batch(params: Any, obs: Any, key: jax.Array) -> tuple[Any, jax.Array]:
            counts["predict_batch"] += 1
            lanes = jax.tree_util.tree_leaves(obs)[0].shape[0]
            make_observation_checker(obs_spec, num_envs=lanes, bounds=False)(obs)
            key, lane_key = jax.random.split(key)

            def one(lane_obs: Any, lane_key: jax.Array) -> Any:
                apply_key, select_key = jax.random.split(lane_key)
                return select(apply(params, lane_obs, apply_key), select_key)

            return jax.vmap(one)(obs, jax.random.split(lane_key, lanes)), key

        if self._max_traces is not None:
            step = chex.assert_max_traces(step, n=self._max_traces)
            step_batch = chex.assert_max_traces(step_batch, n=self._max_traces)
        self._step, self._step_batch = jax.jit(step), jax.jit(step_batch)
        self._compiled_for = key

    def _ready(self) -> None:
        spec = self.spec
        if spec is None or self._compiled_for != (spec.observation_space, spec.action_space):
            self._compile()

    def predict(self, obs: JaxValue) -> JaxValue:
        """The action for one observation (jitted; the key advances)."""
        self._ready()
        assert self._step is not None
        action, self.key = self._step(self.params, obs, self.key)
        return action

    def predict_batch(self, obs: JaxValue) -> JaxValue:
        """Actions for fused ``(N, ...)`` observations: one jitted call, vmapped over lanes."""
        self._ready()
        assert self._step_batch is not None
        actions, self.key = self._step_batch(self.params, obs, self.key)
        return actions

    def __repr__(self) -> str:
        mode = "deterministic" if self.deterministic else "stochastic"
        return f"{type(self).__name__}({getattr(self._apply, '__qualname__', 'apply')}, {mode})"


@functools.singledispatch
def _has_text(spec: SpaceSpec) -> bool:
    return False


@_has_text.register
def _(spec: TextSpec) -> bool:
    return True


@_has_text.register
def _(spec: DictSpec) -> bool:
    return any(_has_text(sub) for sub in spec.spaces.values())


@_has_text.register
def _(spec: TupleSpec) -> bool:
    return any(_has_text(sub) for sub in spec.spaces)


# -- constructors ----------------------------------------------------------------------------


def _takes_rng(fn: Callable[..., Any]) -> bool:
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3 or any(p.kind is p.VAR_POSITIONAL for p in parameters)


def from_apply_fn(
    apply_fn: Callable[..., Any],
    params: Any,
    *,
    takes_rng: bool | None = None,
    **options: Any,
) -> FlaxPolicy:
    """A policy from ``apply_fn(params, obs)`` or ``apply_fn(params, obs, rng)``.

    Args:
        apply_fn: The network for one observation (a Flax ``TrainState.apply_fn`` wrapper,
            a Haiku-style function, any JAX-traceable function).
        params: Its parameters.
        takes_rng: Whether ``apply_fn`` takes a PRNG key third; default: it has 3+
            positional parameters.
        **options: :class:`FlaxPolicy` keyword arguments (``spec``, ``deterministic``,
            ``seed``, ``log_std``, ``select_fn``, ``max_traces``, ``device``, ...).

    Example:
        >>> policy = from_apply_fn(lambda p, obs: obs @ p["w"], {"w": w})   # doctest: +SKIP
    """
    if not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable, got {type(apply_fn).__name__}")
    with_rng = _takes_rng(apply_fn) if takes_rng is None else bool(takes_rng)

    if with_rng:

        def apply(params: Any, obs: Any, key: jax.Array) -> Any:
            return apply_fn(params, obs, key)
    else:

        def apply(params: Any, obs: Any, key: jax.Array) -> Any:
            return apply_fn(params, obs)

    apply.__qualname__ = getattr(apply_fn, "__qualname__", "apply_fn")
    return FlaxPolicy(apply, params, **options)


def from_linen(
    module: Any,
    variables: Any,
    *,
    method: str | Callable[..., Any] | None = None,
    rng_collections: Sequence[str] = (),
    **options: Any,
) -> FlaxPolicy:
    """A policy from a Linen module and its variables (``module.init(...)``'s result).

    Args:
        module: A ``flax.linen.Module`` mapping one observation to logits / mean.
        variables: Its variables (``{"params": ...}``, plus any other collections).
        method: The module method to apply (default ``__call__``).
        rng_collections: RNG collection names the module needs (e.g. ``("dropout",)``); each
            gets a key derived from the step key.
        **options: :class:`FlaxPolicy` keyword arguments.
    """
    if not hasattr(module, "apply"):
        raise TypeError(f"from_linen expects a flax.linen.Module, got {type(module).__name__}")
    names = tuple(rng_collections)

    def apply(variables: Any, obs: Any, key: jax.Array) -> Any:
        rngs = dict(zip(names, jax.random.split(key, len(names)), strict=True)) if names else None
        return module.apply(variables, obs, method=method, rngs=rngs)

    apply.__qualname__ = type(module).__name__
    return FlaxPolicy(apply, variables, **options)


def from_nnx(module: Any, **options: Any) -> FlaxPolicy:
    """A policy from a ``flax.nnx.Module``: split once into a static graph and a state.

    The state is the parameter argument; pass an updated module (or its state) to
    :meth:`FlaxPolicy.update_params` to use new weights without recompiling.

    Args:
        module: An NNX module mapping one observation to logits / mean.
        **options: :class:`FlaxPolicy` keyword arguments.
    """
    from flax import nnx

    if not isinstance(module, nnx.Module):
        raise TypeError(f"from_nnx expects a flax.nnx.Module, got {type(module).__name__}")
    graphdef, state = nnx.split(module)

    def apply(state: Any, obs: Any, key: jax.Array) -> Any:
        return nnx.merge(graphdef, state)(obs)

    def to_state(value: Any) -> Any:
        return nnx.state(value) if isinstance(value, nnx.Module) else value

    apply.__qualname__ = type(module).__name__
    return FlaxPolicy(apply, state, param_transform=to_state, **options)
