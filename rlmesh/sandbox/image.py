"""Build (or reuse) the sandbox image for a source.

The Dockerfile and context come from :mod:`rlmesh.sandbox.context`; the build runs through
:mod:`rlmesh.sandbox.build`. Images are tagged ``rlmesh-sandbox:<hash>`` and labelled with
the full hash of everything that went into them (Dockerfile text, base image id, context
files, rlmesh package), so the same inputs start without rebuilding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmesh.sandbox._docker import docker_module
from rlmesh.sandbox.build import SandboxBuildError, run_build
from rlmesh.sandbox.context import render_context
from rlmesh.sandbox.grammar import check_image_reference
from rlmesh.sandbox.pipconfig import PipSettings, host_pip_settings
from rlmesh.sandbox.sources import SandboxSource
from rlmesh.sandbox.wheel import RlmeshPackage, build_local_wheel, resolve_package

__all__ = [
    "BASE_IMAGE_ENV",
    "IMAGE_REPOSITORY",
    "SandboxBuildError",
    "SandboxImage",
    "default_base_image",
    "ensure_image",
]

_log = logging.getLogger("rlmesh.sandbox")

BASE_IMAGE_ENV = "RLMESH_SANDBOX_BASE_IMAGE"
IMAGE_REPOSITORY = "rlmesh-sandbox"
LABEL_HASH = "rlmesh.sandbox.hash"
_SCHEMA = 2


@dataclass(frozen=True)
class SandboxImage:
    """A built sandbox image.

    Attributes:
        tag: ``rlmesh-sandbox:<hash>``.
        image_id: Docker image id.
        digest: Full hash of the build inputs.
        cached: True when an existing image was reused.
        build_seconds: Time spent resolving or building it.
    """

    tag: str
    image_id: str
    digest: str
    cached: bool
    build_seconds: float


def _has_image(client: Any, tag: str) -> bool:
    docker = docker_module()
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        return False
    return True


def default_base_image(client: Any = None) -> str:
    """The base image used when ``base_image`` is not given.

    ``$RLMESH_SANDBOX_BASE_IMAGE`` when set; else, given a Docker ``client``, the locally built
    ``rlmesh/python-base:3.11`` when it exists; else ``python:3.X-slim`` for the host's version.

    Raises:
        ValueError: ``$RLMESH_SANDBOX_BASE_IMAGE`` is not an image reference.
    """
    from rlmesh.sandbox.base_image import DEFAULT_BASE_TAG  # lazily: it also runs as a script

    override = os.environ.get(BASE_IMAGE_ENV, "")
    if override.strip():
        return check_image_reference(override, f"${BASE_IMAGE_ENV}")
    if client is not None and _has_image(client, DEFAULT_BASE_TAG):
        return DEFAULT_BASE_TAG
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


def ensure_image(
    client: Any,
    source: SandboxSource,
    *,
    base_image: str | None = None,
    rlmesh_package: str | os.PathLike[str] | RlmeshPackage | None = None,
    packages: Sequence[str] = (),
    imports: Sequence[str] = (),
) -> SandboxImage:
    """Return the sandbox image for these inputs, building it when no cached image matches.

    Raises:
        ValueError: A string argument does not follow its grammar.
        SandboxBuildError: The build failed; the message holds the failing step and its output.
    """
    started = time.perf_counter()
    base = check_image_reference(base_image, "base_image") if base_image is not None else default_base_image(client)
    package = rlmesh_package if isinstance(rlmesh_package, RlmeshPackage) else resolve_package(rlmesh_package)
    pip = host_pip_settings()
    context = render_context(base, source, package, packages, imports, pip)
    docker = docker_module()
    try:
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound:
        base_id = None
    inputs = {
        "schema": _SCHEMA,
        "base": base,
        "base_id": base_id,
        "context": context.digest(),
        "rlmesh": package.digest,
    }
    key = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    tag = f"{IMAGE_REPOSITORY}:{key[:24]}"
    try:
        image = client.images.get(tag)
        if (image.labels or {}).get(LABEL_HASH) == key:
            return SandboxImage(tag, image.id, key, True, time.perf_counter() - started)
    except docker.errors.ImageNotFound:
        pass
    if base_id is None:
        _log.info("sandbox base image %s is not present locally; the build will pull it", base)
    with tempfile.TemporaryDirectory(prefix="rlmesh-build-") as tmp:
        extra: dict[str, Path] = {}
        if package.local_root is not None:
            wheel = build_local_wheel(package.local_root, Path(tmp))
            extra[f"build/wheels/{wheel.name}"] = wheel
        elif package.wheel_source is not None:
            extra[f"build/wheels/{package.wheel_source.name}"] = package.wheel_source
        outcome = run_build(client, context.tar(extra), tag, {LABEL_HASH: key}, pip.proxies)
    if outcome.error is not None:
        hint = "".join(f"\nhint: {h}" for h in _hints(outcome.step, base, base_id, package, pip))
        raise SandboxBuildError(
            f"sandbox image build failed at {outcome.step}\n{outcome.tail}\nerror: {outcome.error}{hint}"
        )
    assert outcome.image_id is not None
    return SandboxImage(tag, outcome.image_id, key, False, time.perf_counter() - started)


def _hints(step: str, base: str, base_id: str | None, package: RlmeshPackage, pip: PipSettings) -> list[str]:
    from rlmesh.sandbox.base_image import DEFAULT_BASE_TAG

    hints = []
    if base_id is None:
        hints.append(
            f"the base image {base!r} is not present locally; with no registry reachable, build "
            f"{DEFAULT_BASE_TAG} with `python -m rlmesh.sandbox.base_image` (or "
            "scripts/build_base_image.sh), which sandboxes then use by default"
        )
    if package.is_default and package.requirement in step:
        hints.append(
            f"the default rlmesh_package installs {package.requirement!r} from the "
            'package index; pass rlmesh_package="local" to install this checkout instead'
        )
    if pip.notes and "pip install" in step:
        hints.append("pip settings not forwarded: " + "; ".join(pip.notes))
    return hints
