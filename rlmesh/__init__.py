"""rlmesh: drive Gymnasium environments across process, dependency and machine boundaries.

Serve an env with :class:`EnvServer` (or ``rlmesh serve``), drive it with
:class:`RemoteEnv` / :class:`RemoteVectorEnv` exactly like a Gymnasium env. Tensor leaves
decode to :class:`Tensor` here, to NumPy arrays in :mod:`rlmesh.numpy` and to JAX arrays
in :mod:`rlmesh.jax`.
"""

from rlmesh import spaces, specs
from rlmesh._version import __version__
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.errors import (
    AsyncCallError,
    BadRequestError,
    EndpointConnectionError,
    EndpointTimeoutError,
    EnvBusyError,
    InvalidActionError,
    ProtocolError,
    RemoteEnvError,
    RLMeshError,
    SandboxError,
)
from rlmesh.models import RANDOM_SAMPLE, EpisodeResult, ModelBase, RunResult, run
from rlmesh.plain import Model, RemoteEnv, RemoteVectorEnv, SandboxEnv, SandboxVectorEnv
from rlmesh.sandbox import SandboxBuildError, SandboxOptions, SandboxStartupError
from rlmesh.server import EnvServer, ServeOptions
from rlmesh.specs import EnvContract, SpaceSpec
from rlmesh.tensor import Tensor

__all__ = [
    "AsyncCallError",
    "BadRequestError",
    "EndpointConnectionError",
    "EndpointTimeoutError",
    "EnvBusyError",
    "EnvContract",
    "EnvServer",
    "EpisodeResult",
    "InvalidActionError",
    "Model",
    "ModelBase",
    "ProtocolError",
    "RANDOM_SAMPLE",
    "RLMeshError",
    "RemoteEnv",
    "RemoteEnvBase",
    "RemoteEnvError",
    "RemoteVectorEnv",
    "RemoteVectorEnvBase",
    "RunResult",
    "SandboxBuildError",
    "SandboxEnv",
    "SandboxError",
    "SandboxOptions",
    "SandboxStartupError",
    "SandboxVectorEnv",
    "ServeOptions",
    "SpaceSpec",
    "Tensor",
    "__version__",
    "run",
    "spaces",
    "specs",
]
