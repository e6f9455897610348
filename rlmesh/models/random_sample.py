"""``rlmesh.run``: evaluate a model, or the uniformly random ``RANDOM_SAMPLE`` baseline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

from rlmesh.bridges import NUMPY_BRIDGE, Bridge
from rlmesh.models.base import ModelBase
from rlmesh.models.evaluation import RunOptions
from rlmesh.models.results import RunResult
from rlmesh.seeding import check_seeds

__all__ = ["RANDOM_SAMPLE", "run"]


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

    bridge = NUMPY_BRIDGE

    def __init__(self, seed: int | None) -> None:
        super().__init__()
        self._seed = seed
        self._space: Any = None
        self._batched: Any = None

    def observation_converter(self, source: Bridge) -> Callable[[Any], Any]:
        return lambda value: value

    def load(self) -> None:
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


def run(model: ModelBase[Any, Any] | Any, env: Any, **options: Unpack[RunOptions]) -> RunResult:
    """Evaluate ``model`` (or the :data:`RANDOM_SAMPLE` baseline) on ``env``.

    Same as ``model.run(env, **options)``; with ``RANDOM_SAMPLE`` the actions are uniform
    samples of the env's action space, seeded with the first non-None seed (so runs with the
    same seeds repeat exactly).

    Raises:
        TypeError: ``model`` is neither a model nor ``RANDOM_SAMPLE``.
    """
    if model is RANDOM_SAMPLE:
        first = next((seed for seed in check_seeds(options.get("seeds")) if seed is not None), None)
        model = _RandomModel(first)
    elif not isinstance(model, ModelBase):
        raise TypeError(
            f"run() expects an rlmesh model (e.g. rlmesh.numpy.Model(predict_fn)) or RANDOM_SAMPLE, "
            f"got {type(model).__name__} {model!r:.80}"
        )
    return model.run(env, **options)
