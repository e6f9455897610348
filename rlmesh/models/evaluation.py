"""The episode loops behind ``Model.run`` and ``rlmesh.run``.

:func:`evaluate` plays whole episodes of any environment an rlmesh model can drive and returns
a frozen :class:`~rlmesh.models.results.RunResult`. ``env`` may be

* an endpoint address string (a client of the model's backend is opened, single or vector
  after reading the endpoint's contract, and closed at the end);
* an rlmesh ``RemoteEnv`` / ``RemoteVectorEnv`` of any backend (observations are re-decoded
  into the model's backend; the caller keeps ownership of the client);
* a sandbox session (anything with a ``.client`` that is an rlmesh client);
* a local Gymnasium env or vector env (actions are checked and cast as an ``EnvServer``
  would, observations converted to the model's backend; the caller keeps ownership).

Episode count: ``max_episodes``, else one per seed, else one. Episode ``k`` is reset with
``seeds[k]`` (``None`` once the seeds run out, which continues the env's own RNG).

Vector envs are evaluated in chunks of lanes: episodes ``k .. k+N-1`` run side by side, lane
``i`` reset with ``seeds[k+i]`` by one ``reset(seed=[...])``; a lane counts only its first
episode, and once every lane of the chunk has finished, the next chunk starts with a fresh
reset. Gymnasium's vector API cannot reseed one lane mid-run, so this is the schedule under
which every episode is exactly the one its seed names: a vector run returns the same episodes
as a single-env run over the same seeds with a deterministic policy. Idle lanes keep stepping
until their chunk ends; their extra episodes are discarded and not counted in ``total_steps``.

Each episode is capped at ``max_episode_steps`` steps (default
:data:`DEFAULT_MAX_EPISODE_STEPS`): an episode that reaches the cap ends as truncated instead
of hanging the run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict, Unpack

import numpy as np

from rlmesh.backends import client_classes
from rlmesh.bridges import NUMPY_BRIDGE, TENSOR_BRIDGE, Bridge, to_numpy
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.models.results import EpisodeResult, RunResult
from rlmesh.security import KeySource
from rlmesh.seeding import check_seeds
from rlmesh.specs import EnvContract

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "Policy", "RunOptions", "evaluate", "open_client"]

DEFAULT_MAX_EPISODE_STEPS = 100_000
"""Steps after which an episode is ended as truncated when ``max_episode_steps`` is None."""

_PROGRESS_HINT = 'progress bars need tqdm; install it with: pip install "rlmesh[progress]"'
_SUCCESS_KEYS = ("is_success", "success")
_CLIENT_OPTIONS = ("curve_server_key", "curve_secret_key")


class RunOptions(TypedDict, total=False):
    """The options shared by :func:`evaluate`, ``Model.run`` and ``rlmesh.run``.

    Attributes:
        seeds: Reset seeds, one per episode in order (vector envs: per lane, in chunks).
        max_episodes: Episodes to play; default one per seed, else one.
        max_episode_steps: Steps after which an episode ends as truncated (default
            :data:`DEFAULT_MAX_EPISODE_STEPS`, so a policy that never finishes cannot hang).
        progress: tqdm progress bar: True, False, or None (default) for one when stderr is a
            terminal and tqdm is installed.
        curve_server_key: With an address: the server's CURVE public key (see ``RemoteEnv``).
        curve_secret_key: With an address: this client's CURVE secret certificate file.
    """

    seeds: Sequence[int | None] | None
    max_episodes: int | None
    max_episode_steps: int | None
    progress: bool | None
    curve_server_key: KeySource | None
    curve_secret_key: str | os.PathLike[str] | None


@dataclass(frozen=True)
class _Settings:
    seeds: list[int | None]
    count: int
    cap: int
    progress: bool | None
    client_kwargs: dict[str, Any]

    @classmethod
    def from_options(cls, options: RunOptions) -> _Settings:
        unknown = set(options) - set(RunOptions.__annotations__)
        if unknown:
            raise TypeError(
                f"unexpected run option(s) {sorted(unknown)}; expected {sorted(RunOptions.__annotations__)}"
            )
        seeds = check_seeds(options.get("seeds"))
        count = _positive("max_episodes", options.get("max_episodes")) or max(len(seeds), 1)
        cap = _positive("max_episode_steps", options.get("max_episode_steps")) or DEFAULT_MAX_EPISODE_STEPS
        client_kwargs = {key: options[key] for key in _CLIENT_OPTIONS if options.get(key) is not None}
        return cls(seeds, count, cap, options.get("progress"), client_kwargs)

    def seed(self, index: int) -> int | None:
        return self.seeds[index] if index < len(self.seeds) else None


def _positive(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return int(value)


class Policy(Protocol):
    """What the loops need from a model (``ModelBase`` provides it)."""

    bridge: Bridge

    def prepare(self, contract: EnvContract) -> None: ...
    def observation_converter(self, source: Bridge) -> Callable[[Any], Any]: ...
    def act(self, observation: Any) -> Any: ...
    def act_batch(self, observations: Any) -> Any: ...
    def on_episode_end(self, episode: EpisodeResult) -> None: ...


# -- environments ------------------------------------------------------------------------------


def open_client(
    address: str, bridge: Bridge, **client_kwargs: Any
) -> RemoteEnvBase[Any, Any] | RemoteVectorEnvBase[Any, Any]:
    """Connect to ``address`` with the right client of ``bridge``'s backend, single or vector.

    The single client is tried first; a vector endpoint refuses it at the handshake and the
    vector client is opened instead. The caller owns (and closes) the returned client.

    Raises:
        ValueError: ``address`` is not an endpoint address (from the single attempt).
        ConnectionError: the endpoint could not be reached.
    """
    try:
        single, vector = client_classes(bridge)
    except LookupError:  # a custom bridge: plain clients, observations converted per step
        single, vector = client_classes(TENSOR_BRIDGE)
    try:
        return single(address, **client_kwargs)
    except ValueError as single_error:
        try:
            return vector(address, **client_kwargs)
        except ValueError:
            raise single_error from None


@dataclass
class _Env:
    """The loops' view of an environment: reset/step, contract, and its values' backend."""

    contract: EnvContract
    reset: Callable[[Any], tuple[Any, Any]]
    step: Callable[[Any], tuple[Any, ...]]
    source_bridge: Bridge
    name: str
    close: Callable[[], None] = lambda: None

    @property
    def num_envs(self) -> int:
        return 1 if self.contract.num_envs is None else int(self.contract.num_envs)


def _from_client(client: Any, owned: bool) -> _Env:
    return _Env(
        client.env_contract,
        lambda seed: client.reset(seed=seed),
        client.step,
        client.bridge,
        f"{client.env_contract.id} at {client.address}",
        client.close if owned else (lambda: None),
    )


def _from_gymnasium(env: Any) -> _Env:
    from rlmesh.env_runner import EnvRunner

    runner = EnvRunner(env)  # the contract, and the server's action checks and casts
    return _Env(
        runner.contract,
        lambda seed: tuple(runner.reset({"seed": seed, "options": None})),
        lambda action: tuple(runner.step(action)),
        NUMPY_BRIDGE,
        f"local {runner.contract.id}",
    )


def _open_env(env: Any, bridge: Bridge, client_kwargs: dict[str, Any]) -> _Env:
    clients = (RemoteEnvBase, RemoteVectorEnvBase)
    if isinstance(env, str):
        return _from_client(open_client(env, bridge, **client_kwargs), owned=True)
    if client_kwargs:
        raise ValueError(
            f"{', '.join(sorted(client_kwargs))} apply only when env is an address; pass them to the client "
            "you opened instead"
        )
    if isinstance(env, clients):
        return _from_client(env, owned=False)
    client = getattr(env, "client", None)
    if isinstance(client, clients):  # a sandbox session owns its client
        return _from_client(client, owned=False)
    if callable(getattr(env, "step", None)) and callable(getattr(env, "reset", None)):
        return _from_gymnasium(env)
    raise TypeError(
        f"cannot run on {type(env).__name__} {env!r:.80}: expected an endpoint address string, an "
        "rlmesh RemoteEnv/RemoteVectorEnv, a sandbox env, or a Gymnasium env or vector env"
    )


def _require_tqdm() -> None:
    try:
        import tqdm.auto  # noqa: F401
    except ImportError:
        raise ImportError(_PROGRESS_HINT) from None


def _progress_bar(progress: bool | None, total: int, name: str) -> Any:
    """A tqdm bar over episodes, or None. ``disable=None`` is tqdm's own "only on a terminal"."""
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError(_PROGRESS_HINT) from None
        return None
    return tqdm(total=total, desc=name, unit="episode", disable=None if progress is None else False)


# -- episode loops ---------------------------------------------------------------------------


def _success(info: Any, lane: int | None = None) -> bool | None:
    """The success flag the env reported in ``info`` (a vector info when ``lane`` is given)."""
    if not isinstance(info, dict):
        return None
    for key in _SUCCESS_KEYS:
        if key not in info:
            continue
        values = to_numpy(info[key])
        if lane is None:
            return bool(values.any())
        mask = info.get(f"_{key}")
        if mask is not None and not bool(to_numpy(mask)[lane]):
            continue
        return bool(values[lane]) if values.ndim else bool(values)
    return None


class _Loop:
    """State shared by the single and vector loops: the model, the env, the episodes."""

    def __init__(self, model: Policy, env: _Env, settings: _Settings, bar: Any) -> None:
        self.model = model
        self.env = env
        self.settings = settings
        self.bar = bar
        self.episodes: list[EpisodeResult] = []
        self.convert = model.observation_converter(env.source_bridge)

    def finish(self, episode: EpisodeResult) -> None:
        self.episodes.append(episode)
        if self.bar is not None:
            self.bar.set_postfix(reward=f"{np.mean([e.reward for e in self.episodes]):.2f}", refresh=False)
            self.bar.update(1)
        self.model.on_episode_end(episode)

    def run_single(self) -> None:
        env, act, convert, cap = self.env, self.model.act, self.convert, self.settings.cap
        for index in range(self.settings.count):
            seed = self.settings.seed(index)
            started = time.perf_counter()
            observation, info = env.reset(seed)
            steps, total = 0, 0.0
            terminated = truncated = False
            while True:
                observation, reward, terminated, truncated, info = env.step(act(convert(observation)))
                steps += 1
                total += float(reward)
                terminated, truncated = bool(terminated), bool(truncated)
                if terminated or truncated:
                    break
                if steps >= cap:
                    truncated = True
                    break
            duration = time.perf_counter() - started
            self.finish(EpisodeResult(index, seed, steps, total, terminated, truncated, _success(info), duration))

    def run_vector(self) -> None:
        env, act, convert, cap, n = self.env, self.model.act_batch, self.convert, self.settings.cap, self.env.num_envs
        count, start = self.settings.count, 0
        while start < count:
            used = min(n, count - start)
            lane_seeds = [self.settings.seed(start + lane) if lane < used else None for lane in range(n)]
            started = time.perf_counter()
            observations, _ = env.reset(lane_seeds if any(s is not None for s in lane_seeds) else None)
            active = [lane < used for lane in range(n)]
            steps = [0] * n
            totals = [0.0] * n
            while any(active):
                observations, rewards, terminations, truncations, infos = env.step(act(convert(observations)))
                rewards, terminations, truncations = map(to_numpy, (rewards, terminations, truncations))
                for lane in range(n):
                    if not active[lane]:
                        continue
                    steps[lane] += 1
                    totals[lane] += float(rewards[lane])
                    terminated, truncated = bool(terminations[lane]), bool(truncations[lane])
                    if not (terminated or truncated) and steps[lane] < cap:
                        continue
                    active[lane] = False
                    self.finish(
                        EpisodeResult(
                            start + lane,
                            lane_seeds[lane],
                            steps[lane],
                            totals[lane],
                            terminated,
                            truncated or not terminated,
                            _success(infos, lane),
                            time.perf_counter() - started,
                            lane,
                        )
                    )
            start += used


def evaluate(model: Policy, env: Any, **options: Unpack[RunOptions]) -> RunResult:
    """Play episodes of ``env`` with ``model`` and measure them (see the module docstring).

    Args:
        model: The model (any backend); observations are converted to its backend.
        env: Address string, rlmesh client of any backend, sandbox env, or local Gymnasium
            env or vector env.
        **options: :class:`RunOptions` (``seeds``, ``max_episodes``, ``max_episode_steps``,
            ``progress``, and the CURVE keys for an address).

    Returns:
        The frozen :class:`~rlmesh.models.results.RunResult`.

    Raises:
        ImportError: ``progress=True`` without tqdm.
        InvalidActionError: the model returned an action outside the action space.
        ValueError: a bad option, or the model's declared spec does not match the env.
        Exception: whatever the env or the model raised (with a note saying where); the
            client opened for an address is closed either way.
    """
    settings = _Settings.from_options(options)
    if settings.progress:
        _require_tqdm()  # the install hint before connecting
    opened = _open_env(env, model.bridge, settings.client_kwargs)
    bar = None
    try:
        model.prepare(opened.contract)
        loop = _Loop(model, opened, settings, None)
        loop.bar = bar = _progress_bar(settings.progress, settings.count, opened.contract.id)
        started = time.perf_counter()
        try:
            loop.run_vector() if opened.contract.is_vector else loop.run_single()
        except Exception as error:
            error.add_note(
                f"rlmesh: raised while running {type(model).__name__} on {opened.name} "
                f"(episode {len(loop.episodes)} of {settings.count})"
            )
            raise
        wall_s = time.perf_counter() - started
    finally:
        if bar is not None:
            bar.close()
        opened.close()
    return RunResult.from_episodes(loop.episodes, wall_s)
