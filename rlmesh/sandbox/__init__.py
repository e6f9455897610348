"""Docker sandboxes: run an environment server in a hardened container and drive it.

The ``docker`` SDK is imported lazily (only when a sandbox starts), so ``import rlmesh`` works
without it; install it with ``pip install "rlmesh[sandbox]"``.

Layers: :mod:`~rlmesh.sandbox.sources` (what to run), :mod:`~rlmesh.sandbox.context` (the
Dockerfile and build context, no Docker), :mod:`~rlmesh.sandbox.image` and
:mod:`~rlmesh.sandbox.build` (the build), :mod:`~rlmesh.sandbox.container` (the container),
:mod:`~rlmesh.sandbox.env` (the session that owns them).
"""

from rlmesh.sandbox.build import SandboxBuildError
from rlmesh.sandbox.container import SandboxStartupError, reap_orphans
from rlmesh.sandbox.env import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.sandbox.image import SandboxImage, default_base_image
from rlmesh.sandbox.options import SandboxOptions, SandboxSettings
from rlmesh.sandbox.sources import SandboxSource, parse_source

__all__ = [
    "SandboxBuildError",
    "SandboxEnvBase",
    "SandboxImage",
    "SandboxOptions",
    "SandboxSettings",
    "SandboxSource",
    "SandboxStartupError",
    "SandboxVectorEnvBase",
    "default_base_image",
    "parse_source",
    "reap_orphans",
]
