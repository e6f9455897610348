"""Optional things some tests need, and the one place that decides to skip (or, in CI, fail)."""

from __future__ import annotations

import os
import shutil
import subprocess

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
    """``argv`` wrapped to run in a new network namespace whose only link is loopback."""
    script = 'ip link set lo up && exec "$@"'
    return ["unshare", "--net", "sh", "-c", script, "sh", *argv]


def require_loopback_namespace() -> None:
    """Skip (fail in CI) unless this process can create a loopback-only network namespace."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        unavailable("needs unshare and ip (util-linux, iproute2) for a loopback-only network namespace")
    probe = subprocess.run(loopback_namespace_command(["true"]), capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        unavailable(f"cannot create a loopback-only network namespace: {probe.stderr.strip()}")
