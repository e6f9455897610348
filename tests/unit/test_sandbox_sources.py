"""Sandbox source parsing and argument refusals: all before any Docker work."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rlmesh.sandbox import SandboxEnvBase, SandboxOptions, SandboxVectorEnvBase, parse_source
from rlmesh.sandbox.image import default_base_image
from rlmesh.sandbox.pipconfig import host_pip_settings

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_gym_id_and_gym_scheme_resolve_alike() -> None:
    plain = parse_source("CartPole-v1")
    explicit = parse_source("gym://CartPole-v1")
    assert plain.kind == explicit.kind == "gym"
    assert plain.target == explicit.target == "CartPole-v1"


def test_pinned_hf_source_with_trust() -> None:
    src = parse_source(f"hf://org/repo@{SHA}:suite/0", trust_remote_code=True)
    assert (src.kind, src.hf_repo, src.hf_revision) == ("hf", "org/repo", SHA)
    assert (src.hf_suite, src.hf_task) == ("suite", "0")


def test_unpinned_hf_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="allow_unpinned_hf=True"):
        parse_source("hf://org/repo:suite/0", trust_remote_code=True)


def test_short_revision_refused() -> None:
    with pytest.raises(ValueError, match="40-hex"):
        parse_source("hf://org/repo@main:suite/0", trust_remote_code=True)


def test_hf_without_trust_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        parse_source(f"hf://org/repo@{SHA}:suite/0")
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        parse_source("hf://org/repo:suite/0", allow_unpinned_hf=True)


def test_hf_needs_selector() -> None:
    with pytest.raises(ValueError, match="suite"):
        parse_source(f"hf://org/repo@{SHA}", trust_remote_code=True)


def test_unknown_scheme_lists_accepted_forms() -> None:
    with pytest.raises(ValueError, match="unknown scheme") as info:
        parse_source("s3://bucket/env")
    for form in ("gym://", "hf://", "py://"):
        assert form in str(info.value)


def test_py_source_from_path(tmp_path: Path) -> None:
    module = tmp_path / "my_env_mod.py"
    module.write_text("def make():\n    raise RuntimeError\n")
    src = parse_source(f"py://{module}:make")
    assert (src.kind, src.target, src.local_path) == ("py", "my_env_mod:make", module)


def test_py_source_from_module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "my_env_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "envs.py").write_text("def make():\n    pass\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    src = parse_source("py://my_env_pkg.envs:make")
    assert src.target == "my_env_pkg.envs:make"
    assert src.local_path == package


def test_py_source_missing_module() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_module_xyz"):
        parse_source("py://no_such_module_xyz:make")


def test_non_string_source() -> None:
    with pytest.raises(TypeError, match="source must be a str"):
        parse_source(42)  # type: ignore[arg-type]


def test_constructor_refusals_happen_before_docker() -> None:
    with pytest.raises(ValueError, match="allow_unpinned_hf"):
        SandboxEnvBase("hf://org/repo:suite/0", trust_remote_code=True)
    with pytest.raises(ValueError, match="trust_remote_code"):
        SandboxEnvBase(f"hf://org/repo@{SHA}:suite/0")
    with pytest.raises(ValueError, match="ftp://"):
        SandboxEnvBase("ftp://x")


@pytest.mark.parametrize("num_envs", [1, 0, -3, True, 2.0])
def test_vector_num_envs_refused(num_envs: object) -> None:
    with pytest.raises(ValueError, match=f"num_envs must be an int >= 2.*{num_envs!r}"):
        SandboxVectorEnvBase("CartPole-v1", num_envs)  # type: ignore[arg-type]


def test_vector_mode_refused() -> None:
    with pytest.raises(ValueError, match="'threads'"):
        SandboxVectorEnvBase("CartPole-v1", 2, "threads")


def test_non_json_kwargs_refused_naming_the_parameter() -> None:
    with pytest.raises(TypeError, match=r"gym_make_kwargs\['bad'\]"):
        SandboxEnvBase("CartPole-v1", bad=object())
    with pytest.raises(TypeError, match=r"env_make_kwargs\['bad'\]"):
        SandboxVectorEnvBase("CartPole-v1", 2, bad={1, 2})


def test_default_base_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLMESH_SANDBOX_BASE_IMAGE", raising=False)
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert default_base_image() == f"python:{minor}-slim"
    monkeypatch.setenv("RLMESH_SANDBOX_BASE_IMAGE", "rlmesh/python-base:3.11")
    assert default_base_image() == "rlmesh/python-base:3.11"


def test_pip_settings_skip_local_indexes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cert = tmp_path / "ca.pem"
    cert.write_text("not really a cert")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///opt/x https://example.invalid/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "/opt/wheels")
    monkeypatch.setenv("PIP_CERT", str(cert))
    settings = host_pip_settings()
    assert settings.extra_index_urls == ["https://example.invalid/simple"]
    assert settings.find_links == []
    assert settings.cert_path == cert
    assert any("file:///opt/x" in note for note in settings.notes)
    assert "--cert" in settings.pip_args("/opt/rlmesh-build/ca.pem")


def test_missing_docker_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlmesh.sandbox._docker import docker_client

    monkeypatch.setitem(sys.modules, "docker", None)  # as if the SDK were not installed
    with pytest.raises(ImportError, match=r'pip install "rlmesh\[sandbox\]"'):
        docker_client()


def test_debian_mirror_is_a_url() -> None:
    from rlmesh.sandbox.base_image import debian_mirror

    assert "://" in debian_mirror()


@pytest.mark.parametrize(
    ("source", "scheme", "body", "attr"),
    [
        ("CartPole-v1", "gym", "CartPole-v1", None),
        ("gym://ALE/Pong-v5", "gym", "ALE/Pong-v5", None),
        ("ale_py:ALE/Pong-v5", "gym", "ale_py:ALE/Pong-v5", None),
        ("envs.cartpole:make", "py", "envs.cartpole", "make"),
        ("py://path/to/mod.py:Factory.create", "py", "path/to/mod.py", "Factory.create"),
        ("hf://org/repo:suite/task", "hf", "org/repo:suite/task", None),
    ],
)
def test_one_source_grammar_for_serve_and_sandbox(source: str, scheme: str, body: str, attr: str | None) -> None:
    from rlmesh.sources import parse_source_ref

    ref = parse_source_ref(source)
    assert (ref.scheme, ref.body, ref.attr) == (scheme, body, attr)


def test_serve_refuses_schemes_it_cannot_serve() -> None:
    from rlmesh.sources import env_factory

    with pytest.raises(ValueError, match="'hf://' cannot be served"):
        env_factory("hf://org/repo:suite/task")
    with pytest.raises(ValueError, match="not an importable module name"):
        env_factory("py://path/to/mod.py:make")
    with pytest.raises(ValueError, match="not a Gymnasium id"):
        env_factory("gym://Cart Pole")


def test_vectorization_modes_defined_once() -> None:
    import rlmesh.cli
    import rlmesh.sandbox.env
    import rlmesh.sources

    assert rlmesh.sandbox.env.VECTORIZATION_MODES is rlmesh.sources.VECTORIZATION_MODES
    assert rlmesh.cli.VECTORIZATION_MODES is rlmesh.sources.VECTORIZATION_MODES


def test_refusals_need_no_docker_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rlmesh.numpy import SandboxEnv

    # With no engine reachable, a bad argument still gets its own clear error, not a Docker one.
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    package = tmp_path / "pkg_with_link"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="passwd.*outside the source root"):
        SandboxEnv(f"py://{package}:make")
    with pytest.raises(ValueError, match="base_image"):
        SandboxEnv("CartPole-v1", base_image="python:3.11\nRUN echo INJECTED")
    with pytest.raises(ValueError, match="SandboxOptions.pids"):
        SandboxEnv("CartPole-v1", sandbox_options=SandboxOptions(pids=0))
