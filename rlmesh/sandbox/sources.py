"""Parse and validate sandbox environment sources.

Accepted forms (the ``gym``/``py`` grammar is :mod:`rlmesh.sources`'s):

* ``CartPole-v1`` - a Gymnasium id;
* ``gym://CartPole-v1`` - the same, with an explicit scheme;
* ``hf://org/repo@<40-hex commit>:suite/task`` - a Hugging Face EnvHub repository pinned to a
  commit, with the suite and task selected from the dict its ``make_env`` returns. Running it
  executes the repository's code, so it needs ``trust_remote_code=True``; an unpinned
  ``hf://org/repo:suite/task`` also needs ``allow_unpinned_hf=True``;
* ``py://path/to/module.py:callable`` or ``py://package_or_module:callable`` - the user's own
  environment code: the module file (or package directory) is copied into the image and
  ``callable()`` must return a ``gymnasium.Env``. A dotted name is looked up on ``sys.path``
  of the host (without importing it); a path is taken relative to the working directory.
  Only regular files are copied: a symlink resolving outside the source, a device, a socket
  or a fifo is refused.

Parsing never touches Docker, so refusals are immediate.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from rlmesh.sources import is_dotted_name, parse_source_ref

__all__ = ["ACCEPTED_FORMS", "SandboxSource", "parse_source", "read_regular_file", "source_files"]

ACCEPTED_FORMS = (
    "a Gymnasium id such as 'CartPole-v1'",
    "'gym://<Gymnasium id>'",
    "'hf://<org>/<repo>@<40-hex commit>:<suite>/<task>'",
    "'py://<module or path/to/module.py>:<callable>'",
)

_HEX40 = re.compile(r"[0-9a-f]{40}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_SELECTOR_PART = re.compile(r"[\w.+-]+", re.ASCII)
# Never copied into the image: caches, VCS data, virtual environments, build outputs.
IGNORED = ("__pycache__", "*.pyc", "*.pyo", "*.egg-info", ".git", ".venv", "build", "dist")

# Where sources live inside the image.
SRC_DIR = "/opt/rlmesh-src"
HF_DIR = "/opt/rlmesh-src/_rlmesh_hf_repo"
HF_SHIM_MODULE = "_rlmesh_hf_entry"


@dataclass(frozen=True)
class SandboxSource:
    """A validated sandbox source.

    Attributes:
        raw: The source string as given.
        kind: ``"gym"``, ``"hf"`` or ``"py"``.
        target: What ``rlmesh serve`` receives inside the container: a Gymnasium id or
            ``module:callable``.
        hf_repo: ``org/repo`` for Hugging Face sources.
        hf_revision: Pinned commit (or ``None`` when unpinned and allowed).
        hf_suite: Suite selected from the EnvHub ``make_env`` result.
        hf_task: Task selected within the suite.
        local_path: Host path of the module file or package directory copied into the image.
        module: Module imported for a local source (the copied file or package is its top
            level).
        attr: Dotted attribute path of the factory callable (local sources).
    """

    raw: str
    kind: Literal["gym", "hf", "py"]
    target: str
    hf_repo: str | None = None
    hf_revision: str | None = None
    hf_suite: str | None = None
    hf_task: str | None = None
    local_path: Path | None = None
    module: str | None = None
    attr: str | None = None


def _unknown(source: str, why: str) -> ValueError:
    forms = "; ".join(ACCEPTED_FORMS)
    return ValueError(f"unsupported sandbox source {source!r}: {why}. Accepted forms: {forms}")


def parse_source(source: str, *, trust_remote_code: bool = False, allow_unpinned_hf: bool = False) -> SandboxSource:
    """Validate ``source`` and return what the image build and the server need.

    Args:
        source: The source string (see the module docstring for the accepted forms).
        trust_remote_code: Allow sources whose code comes from a remote repository.
        allow_unpinned_hf: Allow Hugging Face sources without a 40-hex commit.

    Raises:
        TypeError: ``source`` is not a string.
        ValueError: Unknown scheme, malformed source, a refused remote source, or a local
            source holding a symlink out of it or a special file.
        FileNotFoundError: A local source's module cannot be found.
    """
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}: {source!r}")
    if not source.strip():
        raise _unknown(source, "it is empty")
    try:
        ref = parse_source_ref(source)
    except ValueError as exc:
        raise _unknown(source, str(exc)) from None
    if ref.scheme == "gym":
        return SandboxSource(raw=source, kind="gym", target=ref.body)
    if ref.scheme == "py":
        assert ref.attr is not None
        path, module = _locate(source, ref.body)
        source_files(path, source=source)
        return SandboxSource(
            raw=source, kind="py", target=f"{module}:{ref.attr}", local_path=path, module=module, attr=ref.attr
        )
    if ref.scheme == "hf":
        return _hf(source, ref.body, trust_remote_code, allow_unpinned_hf)
    raise _unknown(source, f"unknown scheme {ref.scheme + '://'!r}")


def _hf(source: str, rest: str, trust_remote_code: bool, allow_unpinned_hf: bool) -> SandboxSource:
    repo_part, sep, selector = rest.partition(":")
    if not sep or selector.count("/") != 1 or not all(_SELECTOR_PART.fullmatch(p) for p in selector.split("/")):
        raise _unknown(source, "a Hugging Face source needs a ':<suite>/<task>' selector")
    suite, task = selector.split("/")
    repo, at, revision = repo_part.partition("@")
    if not _REPO.fullmatch(repo):
        raise _unknown(source, f"{repo!r} is not a Hugging Face '<org>/<repo>' name")
    if at and not _HEX40.fullmatch(revision):
        raise ValueError(
            f"Hugging Face source {source!r} must be pinned to a full 40-hex commit SHA, "
            f"got revision {revision!r}; pass allow_unpinned_hf=True only to drop the pin "
            "entirely"
        )
    if not at and not allow_unpinned_hf:
        raise ValueError(
            f"Hugging Face source {source!r} is not pinned to a commit; write "
            f"'hf://{repo}@<40-hex commit>:{selector}' or pass allow_unpinned_hf=True"
        )
    if not trust_remote_code:
        raise ValueError(
            f"Hugging Face source {source!r} runs code from the repository {repo!r}; "
            "review it and pass trust_remote_code=True to allow it"
        )
    return SandboxSource(
        raw=source,
        kind="hf",
        target=f"{HF_SHIM_MODULE}:make_env",
        hf_repo=repo,
        hf_revision=revision or None,
        hf_suite=suite,
        hf_task=task,
    )


def _locate(source: str, location: str) -> tuple[Path, str]:
    """Return (file or package directory to copy, the module name to import)."""
    candidate = Path(location).expanduser()
    looks_like_path = location.endswith(".py") or "/" in location or candidate.is_dir()
    if looks_like_path:
        path = candidate.resolve()
        if path.is_dir() and (path / "__init__.py").is_file():
            name = path.name
        elif path.is_file() and path.suffix == ".py":
            name = path.stem
        else:
            raise FileNotFoundError(
                f"local sandbox source {source!r}: {str(path)!r} is neither a .py file nor a "
                "package directory with __init__.py"
            )
        if not name.isidentifier():
            raise ValueError(f"local sandbox source {source!r}: {name!r} is not a module name")
        return path, name
    if not is_dotted_name(location):
        raise _unknown(source, f"{location!r} is neither a module name nor a .py path")
    top = location.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, [str(Path.cwd()), *sys.path])
    if spec is None or spec.origin in (None, "built-in", "frozen"):
        raise FileNotFoundError(
            f"local sandbox source {source!r}: module {top!r} was not found on sys.path or in the working directory"
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve(), location
    if not str(spec.origin).endswith(".py"):
        raise ValueError(
            f"local sandbox source {source!r}: module {top!r} is not pure Python "
            f"({spec.origin}); install it with packages=[...] instead"
        )
    return Path(spec.origin).resolve(), location


def _refuse_entry(source: str, entry: Path, why: str) -> ValueError:
    return ValueError(f"local sandbox source {source!r}: {str(entry)!r} {why}; it is not copied into the image")


def _kind(mode: int) -> str | None:
    """The name of a special file type, or None for a regular file or directory."""
    for check, name in (
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISFIFO, "a fifo"),
    ):
        if check(mode):
            return name
    return None


def source_files(path: Path, *, source: str | None = None) -> dict[str, Path]:
    """The regular files of a local source, keyed by their path relative to ``path.parent``.

    Symlinks are followed only when they resolve inside ``path`` (a package directory) and
    are then listed under the link's name; ignored names (caches, ``.git``, virtual
    environments) are skipped.

    Raises:
        ValueError: A symlink resolves outside the source, or an entry is a device, a
            socket or a fifo; the message names the entry.
    """
    source = path.as_posix() if source is None else source
    root = path.resolve()
    if root.is_file():
        return {root.name: root}
    ignore = shutil.ignore_patterns(*IGNORED)
    files: dict[str, Path] = {}
    for directory, dirs, names in os.walk(root):
        skipped = ignore(directory, [*dirs, *names])
        dirs[:] = sorted(d for d in dirs if d not in skipped)
        for name in sorted([*dirs, *names]):
            if name in skipped:
                continue
            entry = Path(directory) / name
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                target = entry.resolve()
                if not target.is_relative_to(root):
                    raise _refuse_entry(
                        source, entry, f"is a symlink to {str(target)!r}, outside the source root {str(root)!r}"
                    )
                info = target.stat()
                if stat.S_ISDIR(info.st_mode):
                    continue  # its files are listed where the directory really is
            special = _kind(info.st_mode)
            if special is not None:
                raise _refuse_entry(source, entry, f"is {special}")
            if stat.S_ISREG(info.st_mode):
                files[entry.relative_to(root.parent).as_posix()] = entry
    return files


def read_regular_file(path: Path) -> bytes:
    """Read ``path`` (or the file it links to) only if it is a regular file.

    Raises:
        ValueError: ``path`` is no longer a regular file.
    """
    fd = os.open(path.resolve(), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ValueError(f"{str(path)!r} is not a regular file; it is not copied into the image")
        return handle.read()
