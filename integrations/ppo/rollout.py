"""Rollout collection: a jitted policy step, a Python-loop collector and a ``lax.scan`` one.

Both collectors consume randomness identically (one key split per vector step inside the
policy step), so for the same parameters, key and deterministic env they record the same
transitions. ``valid`` marks NEXT_STEP reset steps (see :mod:`.storage`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlmesh.integrations.ppo import distributions
from rlmesh.integrations.ppo.storage import Rollout, reset_step_mask

ApplyFn = Callable[[Any, jax.Array], tuple[Any, jax.Array]]
"""``apply_fn(params, obs) -> (policy_output, values)``."""


class CollectorState(NamedTuple):
    """What carries over from one rollout to the next.

    Attributes:
        obs: Current observations ``(N, *obs_shape)``.
        first_valid: Whether the next step is a real transition (False right after a done).
        key: PRNG key for action sampling.
        env_state: Whatever the traced env step threads through the scan carry (for example
            the ``EnvHandle`` of ``rlmesh.integrations.jit_step.JitVectorEnv``); None for the
            Python collector.
    """

    obs: jax.Array
    first_valid: jax.Array
    key: jax.Array
    env_state: Any = None


def initial_state(obs: Any, key: jax.Array, env_state: Any = None) -> CollectorState:
    """Collector state right after ``env.reset``: every lane's next step is valid."""
    obs = jnp.asarray(obs)
    return CollectorState(obs, jnp.ones(obs.shape[0], bool), key, env_state)


def policy_step(
    apply_fn: ApplyFn, params: Any, obs: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Sample actions: returns ``(action, logprob, value, next_key)``."""
    key, sub = jax.random.split(key)
    pi, value = apply_fn(params, obs)
    action = distributions.sample(pi, sub)
    return action, distributions.log_prob(pi, action), value, key


def make_act_fn(
    apply_fn: ApplyFn,
) -> Callable[[Any, Any, jax.Array], tuple[jax.Array, jax.Array, jax.Array, jax.Array]]:
    """Jitted :func:`policy_step`: ``act(params, obs, key) -> (action, logprob, value, key)``."""
    return jax.jit(lambda params, obs, key: policy_step(apply_fn, params, obs, key))


def make_value_fn(apply_fn: ApplyFn) -> Callable[[Any, Any], jax.Array]:
    """Jitted ``value(params, obs) -> (N,)``, used for the bootstrap after the last step."""
    return jax.jit(lambda params, obs: apply_fn(params, obs)[1])


def make_greedy_fn(apply_fn: ApplyFn) -> Callable[[Any, Any], jax.Array]:
    """Jitted deterministic policy ``greedy(params, obs) -> action`` (argmax / mean)."""
    return jax.jit(lambda params, obs: distributions.mode(apply_fn(params, jnp.asarray(obs))[0]))


class PackedAct:
    """:func:`policy_step` as one jitted call whose sample, log-prob and value come back in one array.

    A small JAX array costs a few microseconds to bring to the host, as much per array as the
    policy's own dispatch, and a jitted call costs as much again per array argument. So the
    collectors take one host copy per step (the env needs the action on the host anyway): the
    step's outputs travel as the bytes of one ``(N, B)`` uint8 array, split again on the host
    without changing a bit, and the rollout stays in NumPy until one jitted assembly.

    Args:
        apply_fn: ``apply_fn(params, obs) -> (policy_output, values)``.
    """

    def __init__(self, apply_fn: ApplyFn) -> None:
        self._apply_fn = apply_fn
        self._jitted = jax.jit(self._packed)
        self._layouts: dict[tuple[Any, ...], tuple[tuple[int, int, np.dtype, tuple[int, ...]], ...]] = {}

    def _packed(self, params: Any, obs: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
        action, logprob, value, key = policy_step(self._apply_fn, params, obs, key)
        return jnp.concatenate([_as_bytes(x) for x in (action, logprob, value)], axis=1), key

    def __call__(self, params: Any, obs: Any, key: jax.Array) -> tuple[np.ndarray, jax.Array]:
        """``(packed, next_key)``: ``packed`` is the host copy of the step's outputs, ``(N, B)`` uint8."""
        packed, key = self._jitted(params, obs, key)
        return np.asarray(packed), key

    def layout(self, params: Any, obs: Any, key: jax.Array) -> tuple[tuple[int, int, np.dtype, tuple[int, ...]], ...]:
        """Byte range, dtype and per-lane shape of action, log-prob and value in ``packed``."""
        shape, dtype = tuple(np.shape(obs)), np.dtype(getattr(obs, "dtype", np.float32))
        cached = self._layouts.get((shape, dtype))
        if cached is None:
            outs = jax.eval_shape(lambda p, o, k: policy_step(self._apply_fn, p, o, k)[:3], params, obs, key)
            start, parts = 0, []
            for out in outs:
                lane_shape, out_dtype = tuple(out.shape[1:]), np.dtype(out.dtype)
                nbytes = int(np.prod(lane_shape, dtype=np.int64)) * out_dtype.itemsize
                parts.append((start, start + nbytes, out_dtype, lane_shape))
                start += nbytes
            cached = self._layouts[(shape, dtype)] = tuple(parts)
        return cached


def _as_bytes(x: jax.Array) -> jax.Array:
    """``x`` as ``(N, bytes per lane)`` uint8, bit for bit (bool as one byte)."""
    x = x.reshape(x.shape[0], -1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    return jax.lax.bitcast_convert_type(x, jnp.uint8).reshape(x.shape[0], -1)


def _unpack(packed: np.ndarray, part: tuple[int, int, np.dtype, tuple[int, ...]]) -> np.ndarray:
    """One output back from ``packed`` (``(..., N, B)``): ``(..., N, *shape)`` of its dtype."""
    start, end, dtype, shape = part
    return np.ascontiguousarray(packed[..., start:end]).view(dtype).reshape(*packed.shape[:-1], *shape)


class _Columns:
    """One lane group's transitions, kept on the host while the rollout is collected."""

    __slots__ = ("obs", "packed", "rewards", "terminations", "truncations")

    def __init__(self) -> None:
        self.obs: list[Any] = []
        self.packed: list[np.ndarray] = []
        self.rewards: list[Any] = []
        self.terminations: list[Any] = []
        self.truncations: list[Any] = []

    def add(self, obs: Any, packed: np.ndarray, step: tuple[Any, ...]) -> None:
        """Record one step: the observation acted on, the packed outputs and ``env.step``'s result."""
        self.obs.append(obs)
        self.packed.append(packed)
        self.rewards.append(step[1])
        self.terminations.append(step[2])
        self.truncations.append(step[3])

    def stacked(self, layout: tuple[tuple[int, int, np.dtype, tuple[int, ...]], ...]) -> tuple[Any, ...]:
        """``(obs, actions, logprobs, values, rewards, terminations, truncations)``, time-major."""
        packed = np.stack(self.packed)
        outputs = tuple(_unpack(packed, part) for part in layout)
        return (_stack(self.obs), *outputs, _stack(self.rewards), _stack(self.terminations), _stack(self.truncations))


def _stack(column: list[Any]) -> Any:
    """NumPy steps stacked on the host (cheap); anything else left for the jitted assembly to stack.

    The first step may differ: its observation comes from the collector state (a JAX array).
    """
    if all(type(x) is np.ndarray for x in column[1:]):
        return np.stack([np.asarray(column[0]), *column[1:]])
    return column


@jax.jit
def _assemble(groups: tuple[tuple[Any, ...], ...], first_valid: jax.Array, last_value: jax.Array) -> Rollout:
    """Join lane groups' time-major columns along the lane axis into one :class:`Rollout`."""

    def column(i: int, dtype: Any = None) -> jax.Array:
        parts = [group[i] if not isinstance(group[i], list) else jnp.stack(group[i]) for group in groups]
        joined = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)
        return joined if dtype is None else joined.astype(dtype)

    term, trunc = column(5, bool), column(6, bool)
    return Rollout(
        obs=column(0),
        actions=column(1),
        logprobs=column(2),
        values=column(3),
        rewards=column(4, jnp.float32),
        terminations=term,
        truncations=trunc,
        valid=reset_step_mask(term | trunc, first_valid),
        last_value=last_value,
    )


class PythonCollector:
    """Collects rollouts by stepping a Gymnasium-style vector env from a Python loop.

    Args:
        env: Vector env with ``step(actions) -> (obs, rewards, terminations, truncations,
            infos)`` (a Gymnasium vector env, ``rlmesh.numpy.RemoteVectorEnv``, ...).
        apply_fn: ``apply_fn(params, obs) -> (policy_output, values)``.
        to_env_action: Turns the sampled action batch (a NumPy array) into what ``env.step``
            accepts (default: as is). Clip Box actions here; storage keeps the raw sample.
    """

    def __init__(
        self,
        env: Any,
        apply_fn: ApplyFn,
        to_env_action: Callable[[np.ndarray], Any] = np.asarray,
    ) -> None:
        self.env = env
        self.to_env_action = to_env_action
        self._act = PackedAct(apply_fn)
        self._value = make_value_fn(apply_fn)

    def collect(self, params: Any, state: CollectorState, num_steps: int) -> tuple[Rollout, CollectorState]:
        """Run ``num_steps`` vector steps; return the rollout and the state to continue from."""
        obs, key = state.obs, state.key
        act, columns = self._act, _Columns()
        layout = act.layout(params, obs, key)
        for _ in range(num_steps):
            packed, key = act(params, obs, key)
            step = self.env.step(self.to_env_action(_unpack(packed, layout[0])))
            columns.add(obs, packed, step)
            obs = step[0]
        obs = jnp.asarray(obs)
        rollout = _assemble((columns.stacked(layout),), state.first_valid, self._value(params, obs))
        done_last = rollout.terminations[-1] | rollout.truncations[-1]
        return rollout, CollectorState(obs, ~done_last, key, state.env_state)


class DoubleBufferedCollector:
    """Collects rollouts from two lane groups, computing one group's policy while the other steps.

    The Sample Factory scheme: each group is its own vector env (for example one rlmesh
    endpoint each, or two sessions of one server), driven with ``step_async``/``step_wait``.
    After group A's step returns, the policy for A runs while group B's step is still in
    flight on its endpoint, and the other way round, so neither the envs nor the learner sit
    idle waiting for each other.

    The rollout has the lanes of ``envs[0]`` first, then those of ``envs[1]``; each group draws
    its actions from its own key, so the samples differ from :class:`PythonCollector`'s for
    the same key (the learning problem is the same).

    Args:
        envs: Two vector envs with ``step_async``/``step_wait`` (``rlmesh`` remote vector envs,
            Gymnasium vector envs).
        apply_fn: ``apply_fn(params, obs) -> (policy_output, values)``.
        to_env_action: As for :class:`PythonCollector`.

    Raises:
        ValueError: not exactly two envs.
    """

    def __init__(
        self,
        envs: Sequence[Any],
        apply_fn: ApplyFn,
        to_env_action: Callable[[np.ndarray], Any] = np.asarray,
    ) -> None:
        if len(envs) != 2:
            raise ValueError(f"DoubleBufferedCollector takes two lane groups (vector envs), got {len(envs)}")
        self.envs = tuple(envs)
        self.sizes = tuple(int(env.num_envs) for env in envs)
        self.to_env_action = to_env_action
        self._act = PackedAct(apply_fn)
        self._value = make_value_fn(apply_fn)

    def reset(self, seed: int | None = None) -> Any:
        """Reset both groups (lane i gets ``seed + i`` across the groups); returns the joined observations."""
        first = self.sizes[0]
        obs_a, _ = self.envs[0].reset(seed=seed)
        obs_b, _ = self.envs[1].reset(seed=None if seed is None else seed + first)
        return jnp.concatenate([jnp.asarray(obs_a), jnp.asarray(obs_b)])

    def collect(self, params: Any, state: CollectorState, num_steps: int) -> tuple[Rollout, CollectorState]:
        """Run ``num_steps`` vector steps on both groups; return the joined rollout and next state."""
        first, act = self.sizes[0], self._act
        key, *group_keys = jax.random.split(state.key, 3)
        observations = [state.obs[:first], state.obs[first:]]
        layouts = [act.layout(params, obs, key) for obs in observations]
        columns = [_Columns(), _Columns()]
        pending: list[np.ndarray] = [np.empty(0), np.empty(0)]

        def send(group: int) -> None:
            packed, group_keys[group] = act(params, observations[group], group_keys[group])
            self.envs[group].step_async(self.to_env_action(_unpack(packed, layouts[group][0])))
            pending[group] = packed

        send(0)
        send(1)
        for t in range(num_steps):
            for group, env in enumerate(self.envs):
                step = env.step_wait()
                columns[group].add(observations[group], pending[group], step)
                observations[group] = step[0]
                if t + 1 < num_steps:
                    send(group)  # this group's policy runs while the other group steps
        obs = jnp.concatenate([jnp.asarray(o) for o in observations])
        groups = tuple(c.stacked(layout) for c, layout in zip(columns, layouts, strict=True))
        rollout = _assemble(groups, state.first_valid, self._value(params, obs))
        done_last = rollout.terminations[-1] | rollout.truncations[-1]
        return rollout, CollectorState(obs, ~done_last, key, state.env_state)


StepFn = Callable[[Any, jax.Array], tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array]]
"""Traceable env step ``step(env_state, actions) -> (env_state, obs, rewards, terms, truncs)``."""


def make_scan_collector(
    apply_fn: ApplyFn,
    step_fn: StepFn,
    num_steps: int,
    to_env_action: Callable[[jax.Array], jax.Array] = lambda a: a,
) -> Callable[[Any, CollectorState], tuple[Rollout, CollectorState]]:
    """Return a jitted ``collect(params, state) -> (rollout, state)`` built on ``lax.scan``.

    ``step_fn`` must be callable inside ``jit`` (for example an env step routed through an
    ordered host callback, as ``rlmesh.integrations.jit_step.JitVectorEnv.step`` is); it
    threads ``state.env_state`` through the scan carry. ``to_env_action`` is a traceable
    version of :class:`PythonCollector`'s. The transitions match :class:`PythonCollector`
    for the same params, key and env.
    """

    @jax.jit
    def collect(params: Any, state: CollectorState) -> tuple[Rollout, CollectorState]:
        def body(carry: tuple[Any, ...], _: None) -> tuple[tuple[Any, ...], tuple[jax.Array, ...]]:
            obs, key, env_state = carry
            action, logprob, value, key = policy_step(apply_fn, params, obs, key)
            env_state, next_obs, reward, term, trunc = step_fn(env_state, to_env_action(action))
            out = (obs, action, logprob, value, reward.astype(jnp.float32), term, trunc)
            return (jnp.asarray(next_obs, obs.dtype), key, env_state), out

        (obs, key, env_state), (o, a, lp, v, r, te, tr) = jax.lax.scan(
            body, (state.obs, state.key, state.env_state), None, length=num_steps
        )
        te, tr = te.astype(bool), tr.astype(bool)
        valid = reset_step_mask(te | tr, state.first_valid)
        rollout = Rollout(o, a, lp, v, r, te, tr, valid, apply_fn(params, obs)[1])
        return rollout, CollectorState(obs, ~(te[-1] | tr[-1]), key, env_state)

    return collect


@jax.jit
def episode_returns(
    rollout: Rollout, running: jax.Array, lengths: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Track undiscounted episode returns and lengths across rollouts.

    Args:
        rollout: The rollout just collected; reset steps add nothing.
        running: ``(N,)`` return so far of each lane's current episode.
        lengths: ``(N,)`` length so far of each lane's current episode (int32).

    Returns:
        ``(finished_returns, finished_lengths, running, lengths)``: the first two are
        ``(T, N)`` and meaningful where ``terminations | truncations``.
    """

    def body(
        carry: tuple[jax.Array, jax.Array], xs: tuple[jax.Array, jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
        ret, length = carry
        r, valid, done = xs
        ret = ret + jnp.where(valid, r, 0.0)
        length = length + valid.astype(length.dtype)
        return (jnp.where(done, 0.0, ret), jnp.where(done, 0, length)), (ret, length)

    dones = rollout.terminations | rollout.truncations
    (running, lengths), (rets, lens) = jax.lax.scan(body, (running, lengths), (rollout.rewards, rollout.valid, dones))
    return rets, lens, running, lengths
