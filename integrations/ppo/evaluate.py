"""Deterministic evaluation of a policy over a list of seeds on any vector env.

A stop-gap until ``rlmesh.jax.Model.run`` exists: seeds are played in chunks of
``env.num_envs`` lanes, one episode per seed (lane ``i`` of a chunk is reset with that
chunk's ``i``-th seed), and the undiscounted return of each lane's first episode is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def evaluate(
    env: Any,
    policy: Callable[[Any], Any],
    seeds: Sequence[int],
    max_steps: int = 100_000,
) -> np.ndarray:
    """Return the first-episode return for every seed, shape ``(len(seeds),)``.

    Args:
        env: Gymnasium-style vector env (``reset(seed=list)``, ``step``, ``num_envs``).
        policy: ``policy(obs) -> actions`` for a batch of observations (e.g. argmax).
        seeds: One episode per seed.
        max_steps: Safety cap on vector steps per chunk.
    """
    n = int(env.num_envs)
    seeds = [int(s) for s in seeds]
    returns: list[float] = []
    for start in range(0, len(seeds), n):
        chunk = seeds[start : start + n]
        padded = chunk + [chunk[-1] + 1 + i for i in range(n - len(chunk))]
        obs, _ = env.reset(seed=padded)
        total = np.zeros(n, np.float64)
        running = np.ones(n, bool)
        for _ in range(max_steps):
            obs, reward, term, trunc, _ = env.step(np.asarray(policy(obs)))
            total += np.where(running, np.asarray(reward, np.float64), 0.0)
            running &= ~(np.asarray(term) | np.asarray(trunc))
            if not running[: len(chunk)].any():
                break
        returns.extend(total[: len(chunk)].tolist())
    return np.asarray(returns)
