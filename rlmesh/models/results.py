"""What an evaluation measured: one frozen record per episode and their aggregate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["EpisodeResult", "RunResult"]


@dataclass(frozen=True)
class EpisodeResult:
    """One finished episode.

    Attributes:
        index: Position of the episode in the run (episode ``k`` used ``seeds[k]``).
        seed: The seed its reset used, or None.
        steps: Steps taken in the episode.
        reward: Undiscounted sum of its rewards.
        terminated: Whether it ended by termination.
        truncated: Whether it ended by truncation (by the env, or by the step cap).
        success: ``info["is_success"]`` (or ``info["success"]``) of its last step; None when
            the env does not report success. Termination alone says nothing about success
            (CartPole terminates when the pole falls).
        duration_s: Wall time from its reset to its last step.
        lane: The vector lane that played it; None for single envs.
    """

    index: int
    seed: int | None
    steps: int
    reward: float
    terminated: bool
    truncated: bool
    success: bool | None
    duration_s: float
    lane: int | None = None


@dataclass(frozen=True)
class RunResult:
    """What an evaluation (``Model.run`` / ``rlmesh.run``) measured.

    Attributes:
        episodes: The episodes, ordered by ``index``.
        num_episodes: ``len(episodes)``.
        total_steps: Steps summed over the counted episodes.
        mean_reward: Mean episode reward.
        std_reward: Population standard deviation of the episode rewards.
        success_rate: Fraction of successful episodes among those whose env reported
            success; NaN when none did.
        wall_s: Wall time of the run, from the first reset to the last step.
        steps_per_s: ``total_steps / wall_s``.
    """

    episodes: tuple[EpisodeResult, ...]
    num_episodes: int
    total_steps: int
    mean_reward: float
    std_reward: float
    success_rate: float
    wall_s: float
    steps_per_s: float

    @classmethod
    def from_episodes(cls, episodes: Sequence[EpisodeResult], wall_s: float) -> RunResult:
        """Aggregate ``episodes`` (reordered by index) measured over ``wall_s`` seconds."""
        ordered = tuple(sorted(episodes, key=lambda episode: episode.index))
        rewards = np.asarray([episode.reward for episode in ordered], dtype=np.float64)
        reported = [episode.success for episode in ordered if episode.success is not None]
        total_steps = sum(episode.steps for episode in ordered)
        count = len(ordered)
        return cls(
            episodes=ordered,
            num_episodes=count,
            total_steps=total_steps,
            mean_reward=float(rewards.mean()) if count else math.nan,
            std_reward=float(rewards.std()) if count else math.nan,
            success_rate=float(np.mean(reported)) if reported else math.nan,
            wall_s=wall_s,
            steps_per_s=total_steps / wall_s if wall_s > 0 else math.inf,
        )

    @property
    def rewards(self) -> list[float]:
        """Episode rewards in episode order."""
        return [episode.reward for episode in self.episodes]

    def summary(self) -> str:
        """A one-line human summary (success only when the env reports it)."""
        success = "" if math.isnan(self.success_rate) else f", success {self.success_rate:.0%}"
        return (
            f"{self.num_episodes} episodes, {self.total_steps} steps: reward "
            f"{self.mean_reward:.2f} +/- {self.std_reward:.2f}{success}, "
            f"{self.wall_s:.2f}s ({self.steps_per_s:,.0f} steps/s)"
        )
