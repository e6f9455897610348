"""Lazy access to the ``docker`` SDK, so ``import rlmesh`` works without it."""

from __future__ import annotations

from typing import Any

from rlmesh.errors import SandboxError, missing_extra

__all__ = ["docker_client", "docker_module"]


def docker_module() -> Any:
    """Import and return the ``docker`` package, or explain how to install it."""
    try:
        import docker
    except ImportError as exc:
        raise missing_extra("sandbox", "the docker SDK") from exc
    return docker


def docker_client() -> Any:
    """Return a ``docker.DockerClient`` for the local engine (``DOCKER_HOST`` honoured).

    Raises:
        ImportError: The docker SDK is not installed.
        SandboxError: No Docker engine answers.
    """
    docker = docker_module()
    try:
        client = docker.from_env()
    except docker.errors.DockerException as exc:
        raise SandboxError(f"cannot reach a Docker engine ({exc}); start dockerd or set DOCKER_HOST") from exc
    try:
        client.ping()
    except Exception as exc:
        client.close()
        raise SandboxError(f"the Docker engine does not answer ({exc}); start dockerd or set DOCKER_HOST") from exc
    return client
