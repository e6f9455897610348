"""Optional things some tests need, and the one place that decides to skip (or, in CI, fail)."""

from __future__ import annotations

import os

import pytest


def unavailable(reason: str) -> None:
    """Skip the calling test for a missing optional thing; in CI (``CI`` set) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def require_docker() -> None:
    """Skip (fail in CI) unless a Docker engine answers."""
    try:
        import docker

        docker.from_env().ping()
    except Exception as error:  # no SDK, no engine, no permission: all mean "no Docker here"
        unavailable(f"needs a running Docker engine: {error}")


def loopback_namespace_command(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run in a new network namespace whose only link is loopback (for Ray)."""
    from rlmesh.integrations.ray.namespace import NAMESPACE_ENV, namespace_command

    exports = [f"{key}={value}" for key, value in NAMESPACE_ENV.items()]
    return namespace_command(["env", *exports, *argv])


def require_loopback_namespace() -> None:
    """Skip (fail in CI) unless Ray is installed and a loopback-only network namespace can be made."""
    try:
        from rlmesh.integrations.ray.namespace import namespace_problem
    except ImportError as error:
        unavailable(f"needs the rlmesh[ray] extra: {error}")
    problem = namespace_problem()
    if problem is not None:
        unavailable(f"needs a loopback-only network namespace for Ray: {problem}")
