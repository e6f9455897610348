"""Run a command in a network namespace that has nothing but loopback (Linux).

Ray binds every interface and probes outside addresses to find its own. On one machine that
must keep Ray off the network, run the Ray work here instead:

    python -m rlmesh.integrations.ray.namespace python train.py --ray 4

The command also gets its own PID namespace, so every process it starts (Ray's GCS, raylets,
workers) ends when it ends. Needs ``unshare`` (util-linux) and ``ip`` (iproute2), and root or
unprivileged user namespaces.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

# Set inside the namespace: marks it, and keeps Ray from reporting usage.
NAMESPACE_ENV = {"RLMESH_LOOPBACK_NAMESPACE": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def namespace_command(argv: Sequence[str]) -> list[str]:
    """The command line that runs ``argv`` inside a fresh loopback-only network namespace."""
    if not argv:
        raise ValueError("namespace_command needs a command to run")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    prefix = ["unshare", *user, "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
    return [*prefix, "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def namespace_problem() -> str | None:
    """Why a loopback-only namespace cannot be made here, or None when it can."""
    for tool, package in (("unshare", "util-linux"), ("ip", "iproute2"), ("ss", "iproute2")):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian package {package})"
    try:
        probe = subprocess.run(namespace_command(["true"]), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"cannot run unshare: {error}"
    if probe.returncode != 0:
        return f"cannot make a network namespace: {probe.stderr.strip() or probe.returncode}"
    return None


def run_in_namespace(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` of ``argv`` inside a loopback-only namespace, with :data:`NAMESPACE_ENV` set."""
    env = {**(kwargs.pop("env", None) or os.environ), **NAMESPACE_ENV}
    return subprocess.run(namespace_command(argv), env=env, **kwargs)


def outside_interfaces() -> list[str]:
    """Network interfaces of this process's namespace other than loopback."""
    return [name for _, name in socket.if_nameindex() if name != "lo"]


def outside_listeners() -> list[str]:
    """Listening TCP/UDP sockets (``ss`` lines) bound to anything but a loopback address."""
    listing = subprocess.run(["ss", "-H", "-ltun"], capture_output=True, text=True, check=True).stdout
    return [line for line in listing.splitlines() if line.split() and not _is_loopback(line.split()[4])]


def in_loopback_namespace() -> bool:
    """Whether this process runs in a network namespace whose only interface is loopback."""
    return not outside_interfaces()


def _is_loopback(local: str) -> bool:
    host = local.rpartition(":")[0].strip("[]").split("%")[0]
    if host.startswith("::ffff:"):
        host = host[len("::ffff:") :]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*" and other wildcards listen everywhere


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command inside a loopback-only namespace; its exit code is ours."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        print("usage: python -m rlmesh.integrations.ray.namespace COMMAND [ARGS...]", file=sys.stderr)
        return 2
    problem = namespace_problem()
    if problem is not None:
        print(f"rlmesh namespace: {problem}", file=sys.stderr)
        return 2
    return run_in_namespace(args).returncode


if __name__ == "__main__":
    sys.exit(main())
