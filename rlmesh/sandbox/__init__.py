"""Docker sandboxes: run an environment server in a hardened container and drive it.

The ``docker`` SDK is imported lazily (only when a sandbox starts), so ``import rlmesh`` works
without it; install it with ``pip install "rlmesh[sandbox]"``.
"""

from rlmesh.sandbox.container import SandboxStartupError, reap_orphans
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.sandbox.image import SandboxBuildError, SandboxImage, default_base_image
from rlmesh.sandbox.sources import SandboxSource, parse_source

__all__ = [
    "SandboxBuildError",
    "SandboxEnvBase",
    "SandboxImage",
    "SandboxSource",
    "SandboxStartupError",
    "SandboxVectorEnvBase",
    "default_base_image",
    "parse_source",
    "reap_orphans",
]
