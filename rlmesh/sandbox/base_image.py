"""Build a Python base image without any image registry (debootstrap + ``docker import``).

Usage::

    python -m rlmesh.sandbox.base_image [--tag rlmesh/python-base:3.11] [--mirror URL] [--suite bookworm]

Runs ``debootstrap --variant=minbase`` of Debian with python3, python3-venv and python3-pip
from the host's apt mirror (``/etc/apt/sources.list.d/*.sources`` or
``/etc/apt/sources.list``), then imports the root filesystem as an image with the ``docker``
command. Idempotent: does nothing when the tag exists. Needs root and ``debootstrap``.
Sandboxes use ``rlmesh/python-base:3.11`` by default once it exists.

This module uses only the standard library and the ``docker`` command, so
``scripts/build_base_image.sh`` can run it before rlmesh's dependencies are installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["DEFAULT_BASE_TAG", "build_base_image", "debian_mirror", "image_exists", "main"]

DEFAULT_BASE_TAG = "rlmesh/python-base:3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SUITE = "bookworm"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)


def debian_mirror() -> str:
    """The first non-security Debian mirror configured for apt on this host."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in path.read_text().splitlines():
            if line.startswith("URIs:"):
                for uri in line.split()[1:]:
                    if "security" not in uri:
                        return uri
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            fields = line.split()
            if fields[:1] == ["deb"] and "security" not in line:
                for value in fields[1:]:
                    if "://" in value:
                        return value
    return DEFAULT_MIRROR


def image_exists(tag: str) -> bool:
    """True when the local Docker engine has an image ``tag`` (False without a ``docker`` command)."""
    if shutil.which("docker") is None:
        return False
    result = subprocess.run(["docker", "image", "inspect", tag], capture_output=True, check=False)
    return result.returncode == 0


def _trim(rootfs: Path) -> None:
    for cache in (rootfs / "var/cache/apt/archives", rootfs / "var/lib/apt/lists"):
        for item in cache.glob("*"):
            if item.is_file():
                item.unlink()


def _import_rootfs(rootfs: Path, tag: str) -> None:
    changes = [arg for change in _CHANGES for arg in ("--change", change)]
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        imported = subprocess.run(["docker", "import", *changes, "-", tag], stdin=tar.stdout, check=False)
        assert tar.stdout is not None
        tar.stdout.close()
    if tar.returncode != 0 or imported.returncode != 0:
        raise RuntimeError(
            f"importing the root filesystem as {tag} failed (tar {tar.returncode}, docker {imported.returncode})"
        )


def build_base_image(tag: str = DEFAULT_BASE_TAG, *, mirror: str | None = None, suite: str = DEFAULT_SUITE) -> str:
    """Build the base image unless ``tag`` exists; return the tag.

    Raises:
        RuntimeError: No ``docker`` command, not root, no debootstrap, or a failed step.
    """
    if shutil.which("docker") is None:
        raise RuntimeError("the docker command is not installed (apt-get install -y docker.io)")
    if image_exists(tag):
        print(f"base image {tag} already exists; skipping")
        return tag
    if os.geteuid() != 0:
        raise RuntimeError("building the base image needs root (debootstrap creates device nodes and chroots)")
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
    mirror = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="rlmesh-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", "--include=" + ",".join(PACKAGES), suite, str(rootfs), mirror]
        print("running:", " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            raise RuntimeError(f"debootstrap of {suite} from {mirror} failed")
        _trim(rootfs)
        print(f"importing the root filesystem as {tag}", flush=True)
        _import_rootfs(rootfs, tag)
    print(f"built base image {tag}")
    return tag


def _next_steps(tag: str) -> str:
    if tag == DEFAULT_BASE_TAG:
        use = f"Sandboxes now use {tag} by default (unless RLMESH_SANDBOX_BASE_IMAGE names another image)."
    else:
        use = f"Use it with base_image={tag!r} or export RLMESH_SANDBOX_BASE_IMAGE={tag}."
    return f"{use}\nNext: python examples/sandbox_cartpole.py"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints what to do next on success, one error line otherwise."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tag", default=DEFAULT_BASE_TAG)
    parser.add_argument("--mirror", default=None, help="Debian mirror (default: apt's)")
    parser.add_argument("--suite", default=DEFAULT_SUITE)
    args = parser.parse_args(argv)
    try:
        tag = build_base_image(args.tag, mirror=args.mirror, suite=args.suite)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(_next_steps(tag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
