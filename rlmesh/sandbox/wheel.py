"""The rlmesh package installed in a sandbox: a requirement, a wheel, or a wheel of this checkout."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlmesh._version import __version__
from rlmesh.errors import SandboxError
from rlmesh.sandbox.build import SandboxBuildError
from rlmesh.sandbox.grammar import check_requirement, check_wheel_filename

__all__ = ["RlmeshPackage", "build_local_wheel", "checkout_root", "resolve_package"]


@dataclass(frozen=True)
class RlmeshPackage:
    """What installs rlmesh in the image.

    Attributes:
        requirement: The pip requirement, or ``""`` when a wheel is copied in.
        digest: Identity of the package for the image cache key.
        wheel_source: A wheel file to copy into the build context.
        local_root: A checkout to build a wheel from at build time.
        is_default: True for the default ``rlmesh==<host version>``.
    """

    requirement: str
    digest: str
    wheel_source: Path | None = None
    local_root: Path | None = None
    is_default: bool = False

    @property
    def from_wheel(self) -> bool:
        """True when the image installs a wheel copied into the build context."""
        return self.wheel_source is not None or self.local_root is not None


def checkout_root() -> Path:
    """The source checkout rlmesh is imported from.

    Raises:
        SandboxError: rlmesh is not imported from a checkout with a ``pyproject.toml``.
    """
    import rlmesh

    root = Path(rlmesh.__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        raise SandboxError(
            f'rlmesh_package="local" needs rlmesh imported from a source checkout, but '
            f"{root} has no pyproject.toml; pass a wheel path or a pip requirement instead"
        )
    return root


def _local_files(root: Path) -> list[Path]:
    """Files that go into a wheel of the checkout (package dirs, metadata files)."""
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    dirs = {"rlmesh"}
    package_dir = meta.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    dirs.update(str(Path(value).parts[0]) for value in package_dir.values() if value)
    files: list[Path] = [root / name for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in")]
    files = [p for p in files if p.is_file()]
    files += [p for p in root.iterdir() if p.is_file() and p.name.upper().startswith(("README", "LICENSE"))]
    for d in sorted(dirs):
        for path in sorted((root / d).rglob("*")):
            rel = path.relative_to(root)
            if (
                path.is_file()
                and not any(part == "__pycache__" or part.endswith(".egg-info") for part in rel.parts)
                and path.suffix not in (".pyc", ".pyo")
            ):
                files.append(path)
    return sorted(set(files))


def _hash_files(root: Path, files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def resolve_package(rlmesh_package: str | os.PathLike[str] | None) -> RlmeshPackage:
    """Resolve the ``rlmesh_package`` argument without building anything.

    Raises:
        TypeError: Not None, a string or a path.
        ValueError: Neither ``"local"``, a wheel file name, nor a requirement specifier.
        FileNotFoundError: A wheel path that does not exist.
    """
    if rlmesh_package is None:
        req = f"rlmesh=={__version__}"
        return RlmeshPackage(requirement=req, digest=req, is_default=True)
    if not isinstance(rlmesh_package, str | os.PathLike):
        raise TypeError(
            f"rlmesh_package must be None, 'local', a wheel path or a pip requirement, got "
            f"{type(rlmesh_package).__name__}: {rlmesh_package!r}"
        )
    text = os.fspath(rlmesh_package).strip()
    if text == "local":
        root = checkout_root()
        return RlmeshPackage(requirement="", digest="local:" + _hash_files(root, _local_files(root)), local_root=root)
    if text.endswith(".whl"):
        path = Path(text).expanduser().resolve()
        check_wheel_filename(path.name, "rlmesh_package")
        if not path.is_file():
            raise FileNotFoundError(f"rlmesh_package wheel {str(path)!r} does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return RlmeshPackage(requirement="", digest=f"wheel:{path.name}:{digest}", wheel_source=path)
    text = check_requirement(text, "rlmesh_package")
    return RlmeshPackage(requirement=text, digest=f"req:{text}")


def build_local_wheel(root: Path, out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout (keeps the checkout clean).

    Raises:
        SandboxBuildError: pip failed or produced no wheel.
    """
    with tempfile.TemporaryDirectory(prefix="rlmesh-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        for path in _local_files(root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise SandboxBuildError(
                f"building a wheel of the local rlmesh checkout {root} failed "
                f"({shlex.join(cmd)}):\n{proc.stdout}\n{proc.stderr}"
            )
    wheels = sorted(out_dir.glob("rlmesh-*.whl"))
    if not wheels:
        raise SandboxBuildError(f"pip wheel produced no rlmesh wheel in {out_dir}")
    return wheels[-1]
