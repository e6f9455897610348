"""Models: a policy in one backend's values, and the evaluation that runs it on any env.

Imports go one way: ``results`` <- ``evaluation`` <- ``base`` <- ``random_sample``. The
backends declare their ``Model`` classes over :class:`ModelBase` (``rlmesh.Model``,
``rlmesh.numpy.Model``, ``rlmesh.jax.Model``).
"""

from rlmesh.models.base import ModelBase
from rlmesh.models.evaluation import DEFAULT_MAX_EPISODE_STEPS, RunOptions, evaluate, open_client
from rlmesh.models.random_sample import RANDOM_SAMPLE, run
from rlmesh.models.results import EpisodeResult, RunResult

__all__ = [
    "DEFAULT_MAX_EPISODE_STEPS",
    "RANDOM_SAMPLE",
    "EpisodeResult",
    "ModelBase",
    "RunOptions",
    "RunResult",
    "evaluate",
    "open_client",
    "run",
]
