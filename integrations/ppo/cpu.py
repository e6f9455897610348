"""XLA CPU settings for a small policy called once per environment step.

A PPO actor-critic for CartPole is a few 64-wide layers: one call computes in tens of
microseconds, less than the hand-offs XLA's CPU client makes by default. Two of them cost a
thread wake-up on every call: asynchronous dispatch (the call is queued to a dispatch thread)
and the concurrency-optimised scheduler (independent branches, such as the actor and the
critic, run on the intra-op thread pool). Measured here (2 vCPUs), a policy call between two
env steps took 125-180 us with both on and 90-145 us with both off, and the per-call wake-up
of XLA's Eigen thread disappeared. On a small machine whose other core runs the env server,
the woken thread also takes that core from the server.

:func:`run_small_policies_inline` turns both off. XLA reads its flags when the CPU backend
starts, so call it before JAX runs its first computation (importing JAX and Flax is fine).
"""

from __future__ import annotations

import os
import warnings

__all__ = ["SEQUENTIAL_SCHEDULER_FLAG", "run_small_policies_inline"]

SEQUENTIAL_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
"""The XLA flag that keeps a computation's independent branches on the calling thread."""


def run_small_policies_inline() -> None:
    """Run jitted CPU computations in the calling thread, one op after another.

    Appends :data:`SEQUENTIAL_SCHEDULER_FLAG` to ``XLA_FLAGS`` (unless the variable already
    sets that option) and turns ``jax_cpu_enable_async_dispatch`` off. Worth it for small
    policies called once per step; large batched computations may prefer XLA's defaults.

    Warns (and changes only the dispatch setting) when JAX's backends already started, since
    XLA reads its flags once.
    """
    import jax
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", lambda: False)  # private: may move
    if started():
        warnings.warn(
            "run_small_policies_inline() was called after JAX started its backends; the XLA "
            f"flag {SEQUENTIAL_SCHEDULER_FLAG} takes effect only before the first computation",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} {SEQUENTIAL_SCHEDULER_FLAG}".strip()
    if "jax_cpu_enable_async_dispatch" in jax.config.values:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
