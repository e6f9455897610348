"""Build a Python base image without any image registry (debootstrap + ``docker import``).

Usage::

    python -m rlmesh.sandbox.base_image [--tag rlmesh/python-base:3.11] [--mirror URL]

Runs ``debootstrap --variant=minbase --include=python3,python3-venv,python3-pip`` of Debian
bookworm from the host's apt mirror (``/etc/apt/sources.list.d/*.sources`` or
``/etc/apt/sources.list``), then imports the root filesystem as an image. Idempotent: does
nothing when the tag exists. Needs root and ``debootstrap``. ``scripts/build_base_image.sh``
does the same from a shell.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from rlmesh.sandbox._docker import docker_client, docker_module

__all__ = ["DEFAULT_BASE_TAG", "build_base_image", "debian_mirror", "main"]

DEFAULT_BASE_TAG = "rlmesh/python-base:3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
]


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


def build_base_image(tag: str = DEFAULT_BASE_TAG, *, mirror: str | None = None, suite: str = "bookworm") -> str:
    """Build the base image unless ``tag`` exists; return the tag.

    Raises:
        RuntimeError: debootstrap is missing or failed.
    """
    docker = docker_module()
    client = docker_client()
    try:
        try:
            client.images.get(tag)
            print(f"base image {tag} already exists; skipping")
            return tag
        except docker.errors.ImageNotFound:
            pass
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is not installed (apt-get install -y debootstrap)")
        mirror = mirror or debian_mirror()
        with tempfile.TemporaryDirectory(prefix="rlmesh-rootfs-") as tmp:
            rootfs = Path(tmp) / "rootfs"
            cmd = [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(PACKAGES),
                suite,
                str(rootfs),
                mirror,
            ]
            print("running:", " ".join(cmd), flush=True)
            if subprocess.run(cmd, check=False).returncode != 0:
                raise RuntimeError(f"debootstrap of {suite} from {mirror} failed")
            for cache in (rootfs / "var/cache/apt/archives", rootfs / "var/lib/apt/lists"):
                for item in cache.glob("*"):
                    if item.is_file():
                        item.unlink()
            tarball = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tarball), "."], check=True)
            repository, _, version = tag.rpartition(":") if ":" in tag else (tag, "", "latest")
            client.api.import_image(src=str(tarball), repository=repository, tag=version, changes=_CHANGES)
        print(f"built base image {tag}")
        return tag
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tag", default=DEFAULT_BASE_TAG)
    parser.add_argument("--mirror", default=None, help="Debian mirror (default: apt's)")
    parser.add_argument("--suite", default="bookworm")
    args = parser.parse_args(argv)
    build_base_image(args.tag, mirror=args.mirror, suite=args.suite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
