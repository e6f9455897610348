"""Build (or reuse) the sandbox image for a source.

The image is built with the Docker SDK from ``base_image``: a venv at ``/opt/rlmesh-venv``
(works on ``python:3.X-slim`` and on Debian bases with PEP 668), rlmesh and gymnasium, the
requested ``packages``, then every name in ``imports`` is imported at build time. Images are
tagged ``rlmesh-sandbox:<hash>`` and labelled with the full hash of everything that went into
them (Dockerfile text, base image id, context files, rlmesh package), so the same inputs
start without rebuilding.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlmesh._version import __version__
from rlmesh.errors import SandboxError
from rlmesh.sandbox._docker import docker_module
from rlmesh.sandbox._templates import CHECK_IMPORTS, HF_FETCH, HF_SHIM
from rlmesh.sandbox.pipconfig import PipSettings, host_pip_settings
from rlmesh.sandbox.sources import HF_DIR, HF_SHIM_MODULE, SRC_DIR, SandboxSource

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
LABEL_IMAGE = "rlmesh.sandbox.image"
LABEL_HASH = "rlmesh.sandbox.hash"
VENV = "/opt/rlmesh-venv"
BUILD_DIR = "/opt/rlmesh-build"
_SCHEMA = 1
_ALWAYS_IMPORT = ("rlmesh", "gymnasium")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_IGNORE = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".git", ".venv", "build", "dist")


class SandboxBuildError(SandboxError):
    """The sandbox image could not be built; the message carries the failing step's output."""


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


def default_base_image() -> str:
    """``$RLMESH_SANDBOX_BASE_IMAGE`` or ``python:3.X-slim`` for the host's minor version."""
    override = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if override:
        return override
    return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"


# --------------------------------------------------------------------------- rlmesh package


@dataclass
class _Package:
    requirement: str  # what pip installs inside the build
    digest: str  # identity for the cache key
    wheel_source: Path | None = None  # a wheel file to copy into the context
    local_root: Path | None = None  # a checkout to build a wheel from (lazily)
    is_default: bool = False


def _checkout_root() -> Path:
    import rlmesh

    root = Path(rlmesh.__file__).resolve().parent.parent
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
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
    files: list[Path] = []
    for name in ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (root / name).is_file():
            files.append(root / name)
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


def _resolve_package(rlmesh_package: str | os.PathLike[str] | None) -> _Package:
    if rlmesh_package is None:
        req = f"rlmesh=={__version__}"
        return _Package(requirement=req, digest=req, is_default=True)
    if not isinstance(rlmesh_package, str | os.PathLike):
        raise TypeError(
            f"rlmesh_package must be None, 'local', a wheel path or a pip requirement, got "
            f"{type(rlmesh_package).__name__}: {rlmesh_package!r}"
        )
    text = os.fspath(rlmesh_package).strip()
    if text == "local":
        root = _checkout_root()
        return _Package(
            requirement="",
            digest="local:" + _hash_files(root, _local_files(root)),
            local_root=root,
        )
    if text.endswith(".whl"):
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"rlmesh_package wheel {str(path)!r} does not exist")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return _Package(requirement="", digest=f"wheel:{path.name}:{digest}", wheel_source=path)
    if not text:
        raise ValueError("rlmesh_package must not be empty")
    return _Package(requirement=text, digest=f"req:{text}")


def _build_local_wheel(root: Path, out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout (keeps the checkout clean)."""
    with tempfile.TemporaryDirectory(prefix="rlmesh-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        for path in _local_files(root):
            target = src / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out_dir)]
        cmd.append(str(src))
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


# --------------------------------------------------------------------------- build context


@dataclass
class _Context:
    dockerfile: str
    files: dict[str, bytes] = field(default_factory=dict)  # context path -> bytes
    local_paths: dict[str, Path] = field(default_factory=dict)  # context path -> host path

    def add_tree(self, prefix: str, path: Path) -> None:
        if path.is_file():
            self.local_paths[f"{prefix}/{path.name}"] = path
            return
        ignore = shutil.ignore_patterns(*_IGNORE)
        for root, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in ignore(root, [d]))
            for name in sorted(set(names) - ignore(root, names)):
                full = Path(root) / name
                rel = full.relative_to(path.parent)
                self.local_paths[f"{prefix}/{rel.as_posix()}"] = full

    def digest(self) -> str:
        h = hashlib.sha256(self.dockerfile.encode())
        items = {k: v for k, v in self.files.items()}
        items.update({k: p.read_bytes() for k, p in self.local_paths.items()})
        for name in sorted(items):
            h.update(name.encode() + b"\0" + hashlib.sha256(items[name]).digest())
        return h.hexdigest()

    def tar(self, extra: dict[str, Path]) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            entries = {"Dockerfile": self.dockerfile.encode(), **self.files}
            entries.update({k: p.read_bytes() for k, p in {**self.local_paths, **extra}.items()})
            for name, data in sorted(entries.items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        return buf


def _render(
    base_image: str,
    source: SandboxSource,
    package: _Package,
    packages: Sequence[str],
    imports: Sequence[str],
    pip: PipSettings,
) -> _Context:
    files: dict[str, bytes] = {"build/check_imports.py": CHECK_IMPORTS.encode()}
    cert = None
    if pip.cert_path is not None:
        files["build/ca-certificates.pem"] = pip.cert_path.read_bytes()
        cert = f"{BUILD_DIR}/ca-certificates.pem"
    pip_args = shlex.join(pip.pip_args(cert))
    pip_install = f"{VENV}/bin/python -m pip install --no-cache-dir --no-input {pip_args}"
    wheel_glob = package.wheel_source is not None or package.local_root is not None
    rlmesh_req = f"{BUILD_DIR}/wheels/*.whl" if wheel_glob else shlex.quote(package.requirement)
    lines = [
        f"FROM {base_image}",
        "USER root",
        "WORKDIR /",
        f"COPY build/ {BUILD_DIR}/",
        f"RUN python3 -m venv {VENV}",
        f"RUN {pip_install} {rlmesh_req} gymnasium",
    ]
    if packages:
        lines.append(f"RUN {pip_install} {shlex.join(packages)}")
    if source.kind == "hf":
        files["build/hf_fetch.py"] = HF_FETCH.encode()
        env = f"REQUESTS_CA_BUNDLE={cert} SSL_CERT_FILE={cert} " if cert else ""
        fetch = shlex.join([source.hf_repo or "", source.hf_revision or "", HF_DIR])
        lines.append(f"RUN {pip_install} huggingface_hub")
        lines.append(f"RUN {env}{VENV}/bin/python {BUILD_DIR}/hf_fetch.py {fetch}")
    context = _Context(dockerfile="", files=files)
    if source.kind == "hf":
        shim = HF_SHIM.format(hf_dir=HF_DIR, suite=source.hf_suite, task=source.hf_task)
        files[f"src/{HF_SHIM_MODULE}.py"] = shim.encode()
    if source.kind == "py" and source.local_path is not None:
        context.add_tree("src", source.local_path)
    if source.kind in ("py", "hf"):
        lines.append(f"COPY src/ {SRC_DIR}/")
    checks = list(dict.fromkeys([*_ALWAYS_IMPORT, *imports]))
    lines += [
        f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\",
        f"    PYTHONPATH={SRC_DIR} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp",
        f"RUN python {BUILD_DIR}/check_imports.py {shlex.join(checks)}",
        'ENTRYPOINT ["rlmesh"]',
        'CMD ["--help"]',
    ]
    context.dockerfile = "\n".join(lines) + "\n"
    return context


# --------------------------------------------------------------------------- build


def _validate_names(name: str, values: Sequence[str]) -> list[str]:
    if isinstance(values, str):
        raise TypeError(f"{name} must be a sequence of strings, not a single string {values!r}")
    result = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise TypeError(f"{name} must contain non-empty strings, got {value!r}")
        result.append(value.strip())
    return result


def ensure_image(
    client: Any,
    source: SandboxSource,
    *,
    base_image: str | None = None,
    rlmesh_package: str | os.PathLike[str] | None = None,
    packages: Sequence[str] = (),
    imports: Sequence[str] = (),
) -> SandboxImage:
    """Return the sandbox image for these inputs, building it when no cached image matches.

    Raises:
        SandboxBuildError: The build failed; the message holds the failing step and its output.
    """
    started = time.perf_counter()
    packages = _validate_names("packages", packages)
    imports = _validate_names("imports", imports)
    base = base_image or default_base_image()
    package = _resolve_package(rlmesh_package)
    pip = host_pip_settings()
    context = _render(base, source, package, packages, imports, pip)
    docker = docker_module()
    try:
        base_id = client.images.get(base).id
    except docker.errors.ImageNotFound:
        base_id = None
    key = hashlib.sha256(
        json.dumps(
            {
                "schema": _SCHEMA,
                "base": base,
                "base_id": base_id,
                "context": context.digest(),
                "rlmesh": package.digest,
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    tag = f"{IMAGE_REPOSITORY}:{key[:24]}"
    try:
        image = client.images.get(tag)
        if (image.labels or {}).get(LABEL_HASH) == key:
            return SandboxImage(tag, image.id, key, True, time.perf_counter() - started)
    except docker.errors.ImageNotFound:
        pass
    if base_id is None:
        _log.info("sandbox base image %s is not present locally; the build will pull it", base)
    with tempfile.TemporaryDirectory(prefix="rlmesh-sandbox-build-") as tmp:
        extra: dict[str, Path] = {}
        if package.local_root is not None:
            wheel = _build_local_wheel(package.local_root, Path(tmp))
            extra[f"build/wheels/{wheel.name}"] = wheel
        elif package.wheel_source is not None:
            extra[f"build/wheels/{package.wheel_source.name}"] = package.wheel_source
        image_id = _run_build(client, context.tar(extra), tag, key, base, base_id, package, pip)
    return SandboxImage(tag, image_id, key, False, time.perf_counter() - started)


def _run_build(
    client: Any,
    fileobj: io.BytesIO,
    tag: str,
    key: str,
    base: str,
    base_id: str | None,
    package: _Package,
    pip: PipSettings,
) -> str:
    step = "(before the first step)"
    step_output: list[str] = []
    error: str | None = None
    image_id: str | None = None
    stream = client.api.build(
        fileobj=fileobj,
        custom_context=True,
        tag=tag,
        labels={LABEL_IMAGE: "1", LABEL_HASH: key},
        rm=True,
        forcerm=True,
        pull=False,
        network_mode="host",
        buildargs=dict(pip.proxies),
        decode=True,
    )
    for chunk in stream:
        if "stream" in chunk:
            text = chunk["stream"]
            for line in _ANSI.sub("", text).splitlines():
                if line.startswith("Step "):
                    step, step_output = line.strip(), []
                elif line.strip() and not line.startswith(("Removing intermediate", " ---> ")):
                    step_output.append(line.rstrip())
            _log.debug("build: %s", text.rstrip())
        if "aux" in chunk and isinstance(chunk["aux"], dict) and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            error = chunk.get("errorDetail", {}).get("message") or chunk["error"]
    if error is None and image_id is None:
        try:
            image_id = client.images.get(tag).id
        except Exception:
            error = "the build produced no image"
    if error is not None:
        tail = "\n".join(step_output[-60:])
        hints = []
        if base_id is None:
            hints.append(
                f"the base image {base!r} is not present locally; with no registry reachable, "
                f"build one with scripts/build_base_image.sh (or `python -m "
                f"rlmesh.sandbox.base_image`) and set {BASE_IMAGE_ENV}=rlmesh/python-base:3.11"
            )
        if package.is_default and package.requirement in step:
            hints.append(
                f"the default rlmesh_package installs {package.requirement!r} from the "
                'package index; pass rlmesh_package="local" to install this checkout instead'
            )
        if pip.notes and "pip install" in step:
            hints.append("pip settings not forwarded: " + "; ".join(pip.notes))
        hint = "".join(f"\nhint: {h}" for h in hints)
        raise SandboxBuildError(f"sandbox image build failed at {step}\n{tail}\nerror: {error}{hint}")
    assert image_id is not None
    return image_id
