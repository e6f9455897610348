"""Evaluate a model on an environment: the episode loops behind ``Model.run`` and ``rlmesh.run``.

:func:`evaluate` plays whole episodes of any environment an rlmesh model can drive, returning
a frozen :class:`RunResult`. ``env`` may be

* an endpoint address string (a client of the model's backend is opened, single or vector
  after reading the endpoint's contract, and closed at the end);
* an rlmesh ``RemoteEnv`` / ``RemoteVectorEnv`` of any backend (observations are re-decoded
  into the model's backend; the caller keeps ownership of the client);
* a sandbox session (anything with a ``.client`` that is an rlmesh client);
* a local Gymnasium env or vector env (actions are cast and checked as an ``EnvServer``
  would, observations converted to the model's backend; the caller keeps ownership).

Episode count: ``max_episodes``, else one per seed, else one. Episode ``k`` is reset with
``seeds[k]`` (``None`` once the seeds run out, which continues the env's own RNG).

Vector envs are evaluated in **chunks of lanes**: episodes ``k .. k+N-1`` run side by side,
lane ``i`` reset with ``seeds[k+i]`` by one ``reset(seed=[...])``; a lane counts only its
first episode, and once every lane of the chunk has finished, the next chunk starts with a
fresh ``reset(seed=[...])``. This is what "lanes take seeds in order as they finish" means
here. Gymnasium's vector API cannot reseed one lane mid-run (a lane that finishes is
autoreset by the env itself, from its own RNG), so this is the only schedule under which
every episode is exactly the one its seed names: a vector run returns the same episodes as a
single-env run over the same seeds with a deterministic policy. The price is idle lanes at the
end of each chunk (they keep stepping, their extra episodes are discarded and not counted in
``total_steps``); the schedule also does not favour short episodes the way counting whatever
finishes first would. Lanes of the last chunk beyond ``max_episodes`` are reset with seed
``None`` and ignored. Because only first episodes are counted, the autoreset mode of the
vector env (NEXT_STEP, SAME_STEP) does not matter; ``predict_batch`` still sees every lane,
finished or not, once per vector step.

Each episode is capped at ``max_episode_steps`` steps (default :data:`DEFAULT_MAX_EPISODE_STEPS`,
100,000): an episode that reaches the cap ends as truncated instead of hanging the run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rlmesh.bridges import NUMPY_BRIDGE, Bridge
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase, _RemoteBase
from rlmesh.security import KeySource
from rlmesh.specs import EnvContract
from rlmesh.tensor import Tensor

if TYPE_CHECKING:
    from rlmesh.models import ModelBase

__all__ = [
    "DEFAULT_MAX_EPISODE_STEPS",
    "EpisodeResult",
    "RunResult",
    "evaluate",
    "open_client",
]

DEFAULT_MAX_EPISODE_STEPS = 100_000
"""Steps after which an episode is ended as truncated when ``max_episode_steps`` is None."""

_PROGRESS_HINT = 'progress bars need tqdm; install it with: pip install "rlmesh[progress]"'


# -- results ---------------------------------------------------------------------------------


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
        success: ``info["is_success"]`` / ``info["success"]`` of its last step when the env
            reports one, else ``terminated``.
        duration_s: Wall time from its reset to its last step.
        lane: The vector lane that played it; None for single envs.
    """

    index: int
    seed: int | None
    steps: int
    reward: float
    terminated: bool
    truncated: bool
    success: bool
    duration_s: float
    lane: int | None = None


@dataclass(frozen=True)
class RunResult:
    """What :func:`evaluate` (``Model.run`` / ``rlmesh.run``) measured.

    Attributes:
        episodes: The episodes, ordered by ``index``.
        num_episodes: ``len(episodes)``.
        total_steps: Steps summed over the counted episodes.
        mean_reward: Mean episode reward.
        std_reward: Population standard deviation of the episode rewards.
        success_rate: Fraction of episodes with ``success``.
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
        total_steps = sum(episode.steps for episode in ordered)
        count = len(ordered)
        return cls(
            episodes=ordered,
            num_episodes=count,
            total_steps=total_steps,
            mean_reward=float(rewards.mean()) if count else math.nan,
            std_reward=float(rewards.std()) if count else math.nan,
            success_rate=float(np.mean([episode.success for episode in ordered])) if count else math.nan,
            wall_s=wall_s,
            steps_per_s=total_steps / wall_s if wall_s > 0 else math.inf,
        )

    @property
    def rewards(self) -> list[float]:
        """Episode rewards in episode order."""
        return [episode.reward for episode in self.episodes]

    def summary(self) -> str:
        """A one-line human summary."""
        return (
            f"{self.num_episodes} episodes, {self.total_steps} steps: reward "
            f"{self.mean_reward:.2f} +/- {self.std_reward:.2f}, success {self.success_rate:.0%}, "
            f"{self.wall_s:.2f}s ({self.steps_per_s:,.0f} steps/s)"
        )


# -- environments ------------------------------------------------------------------------------


def _to_numpy(value: Any) -> np.ndarray:
    """A NumPy view of a reward/flag/info leaf of any backend."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, Tensor):
        return value.numpy()
    return np.asarray(value)


def _client_pair(bridge: Bridge) -> tuple[type[RemoteEnvBase[Any, Any]], type[RemoteVectorEnvBase[Any, Any]]]:
    """Client classes bound to ``bridge`` (the backend module's own, where one exists)."""
    module_name = {"rlmesh": "rlmesh.plain", "numpy": "rlmesh.numpy", "jax": "rlmesh.jax"}.get(bridge.name)
    if module_name is not None:
        import importlib

        module = importlib.import_module(module_name)
        single, vector = module.RemoteEnv, module.RemoteVectorEnv
        if single.bridge is bridge and vector.bridge is bridge:
            return single, vector
    single = type("RemoteEnv", (RemoteEnvBase,), {"bridge": bridge, "__module__": __name__})
    vector = type("RemoteVectorEnv", (RemoteVectorEnvBase,), {"bridge": bridge, "__module__": __name__})
    return single, vector


def open_client(
    address: str, bridge: Bridge, **client_kwargs: Any
) -> RemoteEnvBase[Any, Any] | RemoteVectorEnvBase[Any, Any]:
    """Connect to ``address`` with the right client of ``bridge``'s backend, single or vector.

    The single client is tried first; a vector endpoint refuses it at the handshake (the
    contract says ``num_envs``) and the vector client is opened instead, so a vector endpoint
    costs one extra handshake. The caller owns (and closes) the returned client.

    Raises:
        ValueError: ``address`` is not an endpoint address (from the single attempt).
        ConnectionError: the endpoint could not be reached.
    """
    single, vector = _client_pair(bridge)
    try:
        return single(address, **client_kwargs)
    except ValueError as single_error:
        try:
            return vector(address, **client_kwargs)
        except ValueError:
            raise single_error from None


class _Env:
    """The evaluator's view of an environment: reset/step, contract, values' backend."""

    def __init__(
        self,
        contract: EnvContract,
        reset: Callable[[Any], tuple[Any, Any]],
        step: Callable[[Any], tuple[Any, ...]],
        source_bridge: Bridge,
        close: Callable[[], None] | None,
        name: str,
    ) -> None:
        self.contract = contract
        self.vector = contract.is_vector
        self.num_envs = int(contract.num_envs) if contract.num_envs is not None else 1
        self.reset = reset
        self.step = step
        self.source_bridge = source_bridge
        self._close = close
        self.name = name

    def close(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()


def _from_client(client: _RemoteBase[Any, Any], owned: bool) -> _Env:
    return _Env(
        client.env_contract,
        lambda seed: client.reset(seed=seed),
        client.step,
        client.bridge,
        client.close if owned else None,
        f"{client.env_contract.id} at {client.address}",
    )


def _from_gymnasium(env: Any) -> _Env:
    from rlmesh.env_runner import EnvRunner

    runner = EnvRunner(env)  # the contract, and the server's action casts and checks
    return _Env(
        runner.contract,
        lambda seed: tuple(runner.reset({"seed": seed, "options": None})),
        lambda action: tuple(runner.step(action)),
        NUMPY_BRIDGE,
        None,
        f"local {runner.contract.id}",
    )


def _open_env(env: Any, bridge: Bridge, **client_kwargs: Any) -> _Env:
    if isinstance(env, str):
        return _from_client(open_client(env, bridge, **client_kwargs), owned=True)
    given = sorted(name for name, value in client_kwargs.items() if value is not None)
    if given:
        raise ValueError(
            f"{', '.join(given)} apply only when env is an address; pass them to the client you opened instead"
        )
    if isinstance(env, _RemoteBase):
        return _from_client(env, owned=False)
    client = getattr(env, "client", None)
    if isinstance(client, _RemoteBase):  # a sandbox session owns its client
        return _from_client(client, owned=False)
    if callable(getattr(env, "step", None)) and callable(getattr(env, "reset", None)):
        return _from_gymnasium(env)
    raise TypeError(
        f"cannot run on {type(env).__name__} {env!r:.80}: expected an endpoint address string, an "
        "rlmesh RemoteEnv/RemoteVectorEnv, a sandbox env, or a Gymnasium env or vector env"
    )


# -- progress --------------------------------------------------------------------------------


class _Progress:
    """A tqdm bar over episodes, or nothing. tqdm is resolved at once, the bar made by start()."""

    def __init__(self, enabled: bool | None) -> None:
        self._bar: Any = None
        self._make: Any = None
        self._rewards: list[float] = []
        if enabled is None:
            enabled = _stderr_is_terminal()
            if not enabled:
                return
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
        elif not enabled:
            return
        else:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError(_PROGRESS_HINT) from None
        self._make = tqdm

    def start(self, total: int, name: str) -> None:
        if self._make is not None:
            self._bar = self._make(total=total, desc=name, unit="episode", file=sys.stderr, dynamic_ncols=True)

    def update(self, episode: EpisodeResult) -> None:
        if self._bar is None:
            return
        self._rewards.append(episode.reward)
        self._bar.set_postfix(reward=f"{np.mean(self._rewards):.2f}", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr is not None and sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


# -- episode loops ---------------------------------------------------------------------------


def _success(info: Any, terminated: bool) -> bool:
    if isinstance(info, dict):
        for key in ("is_success", "success"):
            if key in info:
                return bool(_to_numpy(info[key]).any())
    return bool(terminated)


def _lane_success(infos: Any, lane: int, terminated: bool) -> bool:
    if isinstance(infos, dict):
        for key in ("is_success", "success"):
            if key not in infos:
                continue
            mask = infos.get(f"_{key}")
            if mask is not None and not bool(_to_numpy(mask)[lane]):
                continue
            values = _to_numpy(infos[key])
            return bool(values[lane]) if values.ndim else bool(values)
    return bool(terminated)


def _seed_for(seeds: Sequence[int | None], index: int) -> int | None:
    return seeds[index] if index < len(seeds) else None


class _Loop:
    """State shared by the single and vector loops: the model, episodes, progress."""

    def __init__(
        self,
        model: ModelBase[Any, Any],
        env: _Env,
        seeds: Sequence[int | None],
        count: int,
        cap: int,
        progress: _Progress,
    ) -> None:
        self.model = model
        self.env = env
        self.seeds = seeds
        self.count = count
        self.cap = cap
        self.progress = progress
        self.episodes: list[EpisodeResult] = []
        self.convert = model._observation_converter(env.source_bridge)

    def finish(self, episode: EpisodeResult) -> None:
        self.episodes.append(episode)
        self.progress.update(episode)
        self.model.on_episode_end(episode)

    def run_single(self) -> None:
        env, model, convert, cap = self.env, self.model, self.convert, self.cap
        for index in range(self.count):
            seed = _seed_for(self.seeds, index)
            started = time.perf_counter()
            observation, info = env.reset(seed)
            steps, total = 0, 0.0
            terminated = truncated = False
            while True:
                action = model._act(convert(observation))
                observation, reward, terminated, truncated, info = env.step(action)
                steps += 1
                total += float(reward)
                terminated, truncated = bool(terminated), bool(truncated)
                if terminated or truncated:
                    break
                if steps >= cap:
                    truncated = True
                    break
            self.finish(EpisodeResult(
                index, seed, steps, total, terminated, truncated, _success(info, terminated),
                time.perf_counter() - started,
            ))

    def run_vector(self) -> None:
        env, model, convert, cap, n = self.env, self.model, self.convert, self.cap, self.env.num_envs
        start = 0
        while start < self.count:
            used = min(n, self.count - start)
            lane_seeds = [_seed_for(self.seeds, start + lane) if lane < used else None for lane in range(n)]
            started = time.perf_counter()
            observations, _ = env.reset(lane_seeds if any(s is not None for s in lane_seeds) else None)
            active = [lane < used for lane in range(n)]
            steps = [0] * n
            totals = [0.0] * n
            while any(active):
                actions = model._act_batch(convert(observations), n)
                observations, rewards, terminations, truncations, infos = env.step(actions)
                rewards = _to_numpy(rewards)
                terminations = _to_numpy(terminations)
                truncations = _to_numpy(truncations)
                for lane in range(n):
                    if not active[lane]:
                        continue
                    steps[lane] += 1
                    totals[lane] += float(rewards[lane])
                    terminated, truncated = bool(terminations[lane]), bool(truncations[lane])
                    if not (terminated or truncated) and steps[lane] < cap:
                        continue
                    truncated = truncated or not terminated
                    active[lane] = False
                    self.finish(EpisodeResult(
                        start + lane, lane_seeds[lane], steps[lane], totals[lane], terminated, truncated,
                        _lane_success(infos, lane, terminated), time.perf_counter() - started, lane,
                    ))
            start += used


def _check_seeds(seeds: Any) -> list[int | None]:
    if seeds is None:
        return []
    if isinstance(seeds, str | bytes) or not isinstance(seeds, Sequence | range | np.ndarray):
        raise TypeError(f"seeds must be a sequence of non-negative ints (or None entries), got {seeds!r:.80}")
    checked: list[int | None] = []
    for seed in seeds:
        if seed is None:
            checked.append(None)
        elif isinstance(seed, int | np.integer) and not isinstance(seed, bool | np.bool_) and seed >= 0:
            checked.append(int(seed))
        else:
            raise ValueError(f"seeds must hold non-negative ints or None, got {seed!r} in {seeds!r:.80}")
    return checked


def _check_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


def evaluate(
    model: ModelBase[Any, Any],
    env: Any,
    *,
    seeds: Sequence[int | None] | None = None,
    max_episodes: int | None = None,
    max_episode_steps: int | None = None,
    progress: bool | None = None,
    curve_server_key: KeySource | None = None,
    curve_secret_key: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Play episodes of ``env`` with ``model`` and measure them (see the module docstring).

    Args:
        model: The model (any backend); observations are converted to its backend.
        env: Address string, rlmesh client of any backend, sandbox env, or local Gymnasium
            env or vector env.
        seeds: Reset seeds, one per episode in order.
        max_episodes: Episodes to play; default one per seed, else one.
        max_episode_steps: Per-episode step cap (ends the episode as truncated); default
            :data:`DEFAULT_MAX_EPISODE_STEPS`.
        progress: Show a tqdm bar; default: when stderr is a terminal and tqdm is installed.
        curve_server_key: With an address: the server's CURVE public key (see ``RemoteEnv``).
        curve_secret_key: With an address: this client's CURVE secret certificate file.

    Returns:
        The frozen :class:`RunResult`.

    Raises:
        ImportError: ``progress=True`` without tqdm.
        InvalidActionError: the model returned an action outside the action space.
        ValueError: the model's declared spec does not match the env, or a batch is ragged.
        Exception: whatever the env or the model raised (with a note saying where); the
            client opened for an address is closed either way.
    """
    seed_list = _check_seeds(seeds)
    count = _check_count("max_episodes", max_episodes) or max(len(seed_list), 1)
    cap = _check_count("max_episode_steps", max_episode_steps) or DEFAULT_MAX_EPISODE_STEPS
    bar = _Progress(progress)  # raises the install hint before connecting
    opened = _open_env(env, model.bridge, curve_server_key=curve_server_key, curve_secret_key=curve_secret_key)
    try:
        model._bind(opened.contract)
        model._ensure_loaded()
        loop = _Loop(model, opened, seed_list, count, cap, bar)
        bar.start(count, opened.contract.id)
        started = time.perf_counter()
        try:
            loop.run_vector() if opened.vector else loop.run_single()
        except Exception as error:
            error.add_note(
                f"rlmesh: raised while running {type(model).__name__} on {opened.name} "
                f"(episode {len(loop.episodes)} of {count})"
            )
            raise
        wall_s = time.perf_counter() - started
    finally:
        bar.close()
        opened.close()
    return RunResult.from_episodes(loop.episodes, wall_s)
