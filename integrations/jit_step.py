"""Step a remote vector environment from inside ``jax.jit`` and ``jax.lax.scan``.

:class:`JitVectorEnv` wraps a :class:`rlmesh.jax.RemoteVectorEnv` (or any rlmesh vector client)
so that ``reset`` and ``step`` can be called in traced code. Each call is one
``jax.experimental.io_callback(..., ordered=True)`` whose result shapes and dtypes come from the
endpoint's contract (``env.env_contract``), so a whole rollout, policy included, compiles into
one XLA program::

    from rlmesh.integrations.jit_step import JitVectorEnv

    jenv = JitVectorEnv(env)                      # env: rlmesh.jax.RemoteVectorEnv

    @jax.jit
    def rollout(params, handle, obs):
        def body(carry, _):
            handle, obs = carry
            action = policy(params, obs)
            handle, step = jenv.step(handle, action)
            return (handle, step.observation), step
        return jax.lax.scan(body, (handle, obs), None, length=200)

    handle, obs = jenv.reset(jenv.handle(), seed=0)
    (handle, obs), transitions = rollout(params, handle, obs)

Ordering. The environment is a side effect, so order matters twice: XLA must not reorder or
drop the callbacks (``ordered=True`` threads JAX's effect token through them), and a program
must not replay a stale state (a handle captured once and reused). The explicit
:class:`EnvHandle` carry does the second: it holds the step count the host expects next, the
callback checks it and returns the next one, so each step depends on the previous one through
the data flow and a reused or out-of-date handle fails loudly instead of silently stepping.
On the CPU the env stays usable after such an error. On an accelerator JAX keeps the failed
ordered-effect token of that call, so every later ordered callback in the process fails with
the same error (seen with jax 0.11.2 on an H200): treat a refused handle there as fatal.

When to use it: when the policy, and ideally the learner, live in one jitted program (e.g. a
``lax.scan`` over steps) and the environment cannot be ported to JAX. It does not make the
environment faster: every step is still a round trip to the server, run by the XLA runtime
thread, and each callback result is copied once into XLA's buffers. What the scan buys is
structure (one program, no host loop between policy and learner). Prefer the plain Python loop
when the policy is not jitted, when you need per-step ``infos`` (dropped here), or for Text
observations (no fixed shape). ``vmap`` over an ordered callback is not supported; batch with
the vector env's lanes instead. ``benchmarks/decode_latency.py --only jit_step,scan`` measures
both loops.

x64. Result dtypes follow JAX's canonicalisation: with ``jax_enable_x64`` off, float64 rewards
and int64 observations come back as float32/int32 (values converted on the host).
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from rlmesh.specs import BoxSpec, DictSpec, DiscreteSpec, MultiBinarySpec, MultiDiscreteSpec, SpaceSpec, TupleSpec

__all__ = ["EnvHandle", "JitVectorEnv", "StepResult", "result_shapes"]


class EnvHandle(NamedTuple):
    """The loop carry that orders remote steps.

    Attributes:
        env_id: int32 scalar naming the :class:`JitVectorEnv` this handle belongs to.
        step: int32 scalar, the number of reset/step calls the host has served so far; the
            callback refuses a handle whose count is not the one it expects.
    """

    env_id: jax.Array
    step: jax.Array


class StepResult(NamedTuple):
    """One batched transition, as ``jax.Array`` leaves with a leading ``num_envs`` axis.

    Attributes:
        observation: The next observations (pytree for Dict/Tuple spaces).
        reward: float rewards, shape ``(num_envs,)``.
        terminated: bool, shape ``(num_envs,)``.
        truncated: bool, shape ``(num_envs,)``.
    """

    observation: Any
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array


def _canonical(dtype: Any) -> np.dtype:
    return np.dtype(jax.dtypes.canonicalize_dtype(np.dtype(dtype)))


@functools.singledispatch
def result_shapes(spec: SpaceSpec, num_envs: int) -> Any:
    """``jax.ShapeDtypeStruct`` pytree of ``num_envs`` batched values of a space spec.

    Args:
        spec: A :class:`rlmesh.specs.SpaceSpec` (per lane).
        num_envs: The number of lanes.

    Raises:
        ValueError: for Text spaces (no fixed shape).
    """
    raise ValueError(
        f"cannot step inside jit with {spec.kind!r} observations: io_callback needs fixed shapes and "
        "dtypes (Text has neither); use the Python loop"
    )


@result_shapes.register(BoxSpec)
@result_shapes.register(MultiBinarySpec)
@result_shapes.register(MultiDiscreteSpec)
@result_shapes.register(DiscreteSpec)
def _(spec: SpaceSpec, num_envs: int) -> Any:
    return jax.ShapeDtypeStruct((num_envs, *spec.shape), _canonical(spec.dtype))


@result_shapes.register
def _(spec: DictSpec, num_envs: int) -> Any:
    return {key: result_shapes(sub, num_envs) for key, sub in spec.spaces.items()}


@result_shapes.register
def _(spec: TupleSpec, num_envs: int) -> Any:
    return tuple(result_shapes(sub, num_envs) for sub in spec.spaces)


def _to_host(value: Any, like: jax.ShapeDtypeStruct) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != like.dtype:
        array = array.astype(like.dtype)
    if array.shape != like.shape:
        raise ValueError(f"the env returned shape {array.shape}, the contract promises {like.shape}")
    return array


def _to_host_tree(value: Any, shapes: Any) -> Any:
    if isinstance(shapes, Mapping):
        return {key: _to_host_tree(value[key], sub) for key, sub in shapes.items()}
    if isinstance(shapes, tuple):
        return tuple(_to_host_tree(item, sub) for item, sub in zip(value, shapes, strict=True))
    return _to_host(value, shapes)


_REGISTRY_LOCK = threading.Lock()
_NEXT_ID = itertools.count(1)


class JitVectorEnv:
    """Call a remote vector env's ``reset``/``step`` from jitted code through ordered callbacks.

    Args:
        env: An rlmesh vector client (``rlmesh.jax.RemoteVectorEnv`` recommended). It must
            not be stepped from Python while a jitted program that steps it is running.

    Example:
        >>> jenv = JitVectorEnv(env)                                   # doctest: +SKIP
        >>> handle, obs = jax.jit(jenv.reset, static_argnames="seed")(jenv.handle(), seed=0)  # doctest: +SKIP
        >>> handle, step = jax.jit(jenv.step)(handle, jnp.zeros(4, jnp.int32))  # doctest: +SKIP
    """

    def __init__(self, env: Any) -> None:
        contract = env.env_contract
        if contract.num_envs is None:
            raise ValueError(
                f"JitVectorEnv needs a vector endpoint; {contract.id} at {env.address} serves a "
                "single env (serve it with --num-envs N)"
            )
        self.env = env
        self.num_envs: int = int(contract.num_envs)
        self.observation_shapes = result_shapes(contract.observation_space, self.num_envs)
        float_dtype = _canonical(np.float64)
        self._step_shapes = (
            jax.ShapeDtypeStruct((), np.int32),
            self.observation_shapes,
            jax.ShapeDtypeStruct((self.num_envs,), float_dtype),
            jax.ShapeDtypeStruct((self.num_envs,), np.bool_),
            jax.ShapeDtypeStruct((self.num_envs,), np.bool_),
        )
        self._reset_shapes = (jax.ShapeDtypeStruct((), np.int32), self.observation_shapes)
        with _REGISTRY_LOCK:
            self.env_id = next(_NEXT_ID)
        self._served = 0
        self._lock = threading.Lock()

    # -- handles ------------------------------------------------------------------------
    def handle(self) -> EnvHandle:
        """A handle for the env's current state (call once, then thread it through the carry)."""
        return EnvHandle(jnp.int32(self.env_id), jnp.int32(self._served))

    @property
    def steps_served(self) -> int:
        """How many reset/step callbacks the host has served."""
        return self._served

    # -- host side ----------------------------------------------------------------------
    def _claim(self, env_id: np.ndarray, step: np.ndarray) -> None:
        if int(env_id) != self.env_id:
            raise RuntimeError(f"this EnvHandle belongs to JitVectorEnv #{int(env_id)}, not #{self.env_id}")
        if int(step) != self._served:
            raise RuntimeError(
                f"stale EnvHandle: it is at step {int(step)} but the env has served {self._served} "
                "calls; thread the handle returned by each reset/step through the loop carry"
            )

    def _host_reset(self, env_id: np.ndarray, step: np.ndarray, seed: np.ndarray) -> Any:
        with self._lock:
            self._claim(env_id, step)
            seed_value = int(seed)
            observation, _ = self.env.reset(seed=None if seed_value < 0 else seed_value)
            self._served += 1
            return np.int32(self._served), _to_host_tree(observation, self.observation_shapes)

    def _host_step(self, env_id: np.ndarray, step: np.ndarray, action: Any) -> Any:
        with self._lock:
            self._claim(env_id, step)
            # io_callback hands over jax.Arrays; NumPy views cross the wire without a copy.
            action = jax.tree_util.tree_map(np.asarray, action)
            observation, reward, terminated, truncated, _ = self.env.step(action)
            self._served += 1
            shapes = self._step_shapes
            return (
                np.int32(self._served),
                _to_host_tree(observation, self.observation_shapes),
                _to_host(reward, shapes[2]),
                _to_host(terminated, shapes[3]),
                _to_host(truncated, shapes[4]),
            )

    # -- traced side --------------------------------------------------------------------
    def reset(self, handle: EnvHandle, seed: int | jax.Array | None = None) -> tuple[EnvHandle, Any]:
        """Reset every lane; usable inside ``jax.jit``.

        Args:
            handle: The current handle (from :meth:`handle` or the previous call).
            seed: None, or a non-negative int (lanes get ``seed, seed+1, ...``); may be traced.

        Returns:
            ``(next_handle, observations)``.
        """
        seed_array = jnp.int32(-1) if seed is None else jnp.asarray(seed, jnp.int32)
        step, observation = io_callback(
            self._host_reset,
            self._reset_shapes,
            handle.env_id,
            handle.step,
            seed_array,
            ordered=True,
        )
        return EnvHandle(handle.env_id, step), observation

    def step(self, handle: EnvHandle, action: Any) -> tuple[EnvHandle, StepResult]:
        """Step every lane with a batched ``(num_envs, ...)`` action; usable inside ``jax.jit``.

        Returns:
            ``(next_handle, StepResult(observation, reward, terminated, truncated))``. Lanes
            autoreset Gymnasium's NEXT_STEP way, as the vector client does.
        """
        step, observation, reward, terminated, truncated = io_callback(
            self._host_step, self._step_shapes, handle.env_id, handle.step, action, ordered=True
        )
        return EnvHandle(handle.env_id, step), StepResult(observation, reward, terminated, truncated)
