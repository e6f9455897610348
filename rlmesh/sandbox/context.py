"""The sandbox build context: Dockerfile text and files, built without Docker.

:func:`render_context` validates every user string against its grammar and returns a
:class:`BuildContext`; ``digest()`` identifies it for the image cache and ``tar()`` packs it
for the Docker API. Nothing here talks to Docker.
"""

from __future__ import annotations

import hashlib
import io
import shlex
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rlmesh.sandbox._templates import CHECK_IMPORTS, HF_FETCH, HF_SHIM
from rlmesh.sandbox.grammar import check_image_reference, check_module_names, check_requirements
from rlmesh.sandbox.pipconfig import PipSettings
from rlmesh.sandbox.sources import HF_DIR, HF_SHIM_MODULE, SRC_DIR, SandboxSource, read_regular_file, source_files
from rlmesh.sandbox.wheel import RlmeshPackage

__all__ = ["BUILD_DIR", "VENV", "BuildContext", "render_context"]

VENV = "/opt/rlmesh-venv"
BUILD_DIR = "/opt/rlmesh-build"
ALWAYS_IMPORT = ("rlmesh", "gymnasium")


@dataclass
class BuildContext:
    """A Dockerfile and the files next to it.

    Attributes:
        dockerfile: The Dockerfile text.
        files: Context path -> bytes generated here.
        local_paths: Context path -> host file copied in (regular files only).
    """

    dockerfile: str
    files: dict[str, bytes] = field(default_factory=dict)
    local_paths: dict[str, Path] = field(default_factory=dict)

    def _entries(self, extra: Mapping[str, Path] | None = None) -> dict[str, bytes]:
        entries = {"Dockerfile": self.dockerfile.encode(), **self.files}
        for name, path in {**self.local_paths, **(extra or {})}.items():
            entries[name] = read_regular_file(path)
        return entries

    def digest(self) -> str:
        """SHA-256 over the Dockerfile and every file (names and contents)."""
        h = hashlib.sha256()
        for name, data in sorted(self._entries().items()):
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

    def tar(self, extra: Mapping[str, Path] | None = None) -> io.BytesIO:
        """The context as an uncompressed tar, plus ``extra`` files (context path -> host file)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, data in sorted(self._entries(extra).items()):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        return buf


def render_context(
    base_image: str,
    source: SandboxSource,
    package: RlmeshPackage,
    packages: Sequence[str],
    imports: Sequence[str],
    pip: PipSettings,
) -> BuildContext:
    """Render the Dockerfile and collect the context files for one sandbox image.

    The image has a venv at ``/opt/rlmesh-venv`` (works on ``python:3.X-slim`` and on Debian
    bases with PEP 668), rlmesh and gymnasium, the requested ``packages``, the source, and
    checks at build time that every name in ``imports`` imports.

    Raises:
        ValueError: ``base_image``, ``packages`` or ``imports`` do not follow their grammar,
            or a local source holds a symlink out of it or a special file.
    """
    base_image = check_image_reference(base_image, "base_image")
    packages = check_requirements(packages, "packages")
    imports = check_module_names(imports, "imports")
    files: dict[str, bytes] = {"build/check_imports.py": CHECK_IMPORTS.encode()}
    cert = None
    if pip.cert_path is not None:
        files["build/ca-certificates.pem"] = pip.cert_path.read_bytes()
        cert = f"{BUILD_DIR}/ca-certificates.pem"
    pip_install = f"{VENV}/bin/python -m pip install --no-cache-dir --no-input {shlex.join(pip.pip_args(cert))}"
    rlmesh_req = f"{BUILD_DIR}/wheels/*.whl" if package.from_wheel else shlex.quote(package.requirement)
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
    context = BuildContext(dockerfile="", files=files)
    if source.kind == "hf":
        files["build/hf_fetch.py"] = HF_FETCH.encode()
        env = f"REQUESTS_CA_BUNDLE={cert} SSL_CERT_FILE={cert} " if cert else ""
        fetch = shlex.join([source.hf_repo or "", source.hf_revision or "", HF_DIR])
        lines.append(f"RUN {pip_install} huggingface_hub")
        lines.append(f"RUN {env}{VENV}/bin/python {BUILD_DIR}/hf_fetch.py {fetch}")
        shim = HF_SHIM.format(hf_dir=HF_DIR, suite=source.hf_suite, task=source.hf_task)
        files[f"src/{HF_SHIM_MODULE}.py"] = shim.encode()
    if source.kind == "py" and source.local_path is not None:
        for rel, path in source_files(source.local_path, source=source.raw).items():
            context.local_paths[f"src/{rel}"] = path
    if source.kind in ("py", "hf"):
        lines.append(f"COPY src/ {SRC_DIR}/")
    checks = list(dict.fromkeys([*ALWAYS_IMPORT, *imports]))
    lines += [
        f"ENV PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\",
        f"    PYTHONPATH={SRC_DIR} PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HOME=/tmp",
        f"RUN python {BUILD_DIR}/check_imports.py {shlex.join(checks)}",
        'ENTRYPOINT ["rlmesh"]',
        'CMD ["--help"]',
    ]
    context.dockerfile = "\n".join(lines) + "\n"
    return context
