"""The sandbox build context, grammars, options and keyword declaration: all without Docker."""

from __future__ import annotations

import inspect
import os
import socket
import tarfile
from pathlib import Path

import pytest

import rlmesh
import rlmesh.jax
import rlmesh.numpy
from rlmesh.sandbox import SandboxEnvBase, SandboxOptions, SandboxSettings, SandboxVectorEnvBase, parse_source
from rlmesh.sandbox.build import parse_build_stream
from rlmesh.sandbox.context import render_context
from rlmesh.sandbox.grammar import check_image_reference
from rlmesh.sandbox.pipconfig import PipSettings
from rlmesh.sandbox.wheel import resolve_package

REQ = resolve_package("rlmesh==0.0.0")


def _render(source: str = "CartPole-v1", **overrides: object) -> str:
    args: dict = {"base_image": "python:3.11-slim", "packages": (), "imports": (), **overrides}
    context = render_context(
        args["base_image"], parse_source(source), REQ, args["packages"], args["imports"], PipSettings()
    )
    return context.dockerfile


def test_dockerfile_holds_base_packages_and_import_checks() -> None:
    text = _render(packages=["numpy>=1.26", "pkg @ https://example.invalid/pkg.whl"], imports=["numpy.linalg"])
    lines = text.splitlines()
    assert lines[0] == "FROM python:3.11-slim"
    assert any("numpy>=1.26" in line and "'pkg @ https://example.invalid/pkg.whl'" in line for line in lines)
    assert lines[-3].endswith("check_imports.py rlmesh gymnasium numpy.linalg")


@pytest.mark.parametrize(
    "reference",
    ["python:3.11-slim", "rlmesh/python-base:3.11", "localhost:5000/org/img:tag", f"img@sha256:{'a' * 64}"],
)
def test_image_references_accepted(reference: str) -> None:
    assert check_image_reference(reference, "base_image") == reference


@pytest.mark.parametrize(
    "reference", ["python:3.11\nRUN echo INJECTED", "Python:3.11", "img:tag with space", "-v", "", 3]
)
def test_bad_base_image_refused_naming_the_parameter(reference: object) -> None:
    with pytest.raises(ValueError, match="base_image must be a Docker image reference"):
        _render(base_image=reference)
    with pytest.raises(ValueError, match="base_image"):
        SandboxEnvBase("CartPole-v1", base_image=reference)


def test_bad_base_image_from_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlmesh.sandbox.image import default_base_image

    monkeypatch.setenv("RLMESH_SANDBOX_BASE_IMAGE", "python:3.11\nRUN echo INJECTED")
    with pytest.raises(ValueError, match=r"\$RLMESH_SANDBOX_BASE_IMAGE"):
        default_base_image()


@pytest.mark.parametrize("package", ["numpy\nRUN echo INJECTED", "--index-url=https://evil.invalid", "a b c", ""])
def test_bad_packages_refused_naming_the_parameter(package: str) -> None:
    with pytest.raises(ValueError, match="packages must hold pip requirement specifiers"):
        SandboxEnvBase("CartPole-v1", packages=[package])
    with pytest.raises(ValueError, match="packages"):
        _render(packages=[package])


def test_packages_as_a_single_string_refused() -> None:
    with pytest.raises(TypeError, match="packages must be a list of strings"):
        SandboxEnvBase("CartPole-v1", packages="numpy")


@pytest.mark.parametrize("name", ["os\nRUN echo INJECTED", "os; rm", "-c", "a..b", "1abc"])
def test_bad_imports_refused_naming_the_parameter(name: str) -> None:
    with pytest.raises(ValueError, match="imports must hold dotted module names"):
        SandboxEnvBase("CartPole-v1", imports=[name])


@pytest.mark.parametrize("package", ["rlmesh\nRUN echo INJECTED", "--pre rlmesh", "/tmp/not a wheel.whl"])
def test_bad_rlmesh_package_refused_naming_the_parameter(package: str) -> None:
    with pytest.raises(ValueError, match="rlmesh_package"):
        SandboxEnvBase("CartPole-v1", rlmesh_package=package)


@pytest.mark.parametrize(
    "source", ["CartPole-v1\nRUN echo INJECTED", "gym://Cart Pole", "py://mod:make\nx", "hf://org/repo:s/t\nx"]
)
def test_bad_sources_refused(source: str) -> None:
    with pytest.raises(ValueError, match="unsupported sandbox source"):
        parse_source(source, trust_remote_code=True, allow_unpinned_hf=True)


def test_env_kwarg_keys_must_be_identifiers() -> None:
    with pytest.raises(ValueError, match=r"gym_make_kwargs keys must be Python identifiers, got 'a=b'"):
        SandboxEnvBase("CartPole-v1", **{"a=b": 1})


def _package(tmp_path: Path) -> Path:
    package = tmp_path / "leaky_env_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("def make():\n    raise RuntimeError\n")
    return package


def test_symlink_outside_the_source_refused_naming_the_link(tmp_path: Path) -> None:
    secret = tmp_path / "host_secret.txt"
    secret.write_text("host secret")
    package = _package(tmp_path)
    (package / "host_secret.txt").symlink_to(secret)
    with pytest.raises(ValueError, match=r"host_secret\.txt.*is a symlink to .*outside the source root"):
        parse_source(f"py://{package}:make")
    with pytest.raises(ValueError, match="host_secret.txt"):
        SandboxEnvBase(f"py://{package}:make")


def test_directory_symlink_outside_the_source_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data.txt").write_text("x")
    package = _package(tmp_path)
    (package / "linked").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="linked"):
        parse_source(f"py://{package}:make")


def test_symlink_inside_the_source_is_copied_as_a_file(tmp_path: Path) -> None:
    package = _package(tmp_path)
    (package / "data.txt").write_text("inside")
    (package / "alias.txt").symlink_to(package / "data.txt")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.pyc").write_bytes(b"\0")
    context = render_context("python:3.11-slim", parse_source(f"py://{package}:make"), REQ, (), (), PipSettings())
    with tarfile.open(fileobj=context.tar(), mode="r") as tar:
        names = set(tar.getnames())
        alias = tar.extractfile("src/leaky_env_pkg/alias.txt")
        assert alias is not None and alias.read() == b"inside"
    assert {"src/leaky_env_pkg/__init__.py", "src/leaky_env_pkg/data.txt", "Dockerfile"} <= names
    assert not any("__pycache__" in name for name in names)


def test_fifo_and_socket_refused(tmp_path: Path) -> None:
    package = _package(tmp_path)
    os.mkfifo(package / "pipe")
    with pytest.raises(ValueError, match="pipe.*is a fifo"):
        parse_source(f"py://{package}:make")
    (package / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(package / "sock"))
        with pytest.raises(ValueError, match="sock.*is a socket"):
            parse_source(f"py://{package}:make")


def test_build_stream_parsing_names_the_failing_step() -> None:
    chunks = [
        {"stream": "Step 1/3 : FROM base\n"},
        {"stream": " ---> abc\n"},
        {"stream": "Step 2/3 : RUN pip install nope\n"},
        {"stream": "\x1b[31mERROR: No matching distribution\x1b[0m\n"},
        {"error": "returned a non-zero code: 1", "errorDetail": {"message": "exit code 1"}},
    ]
    outcome = parse_build_stream(chunks)
    assert outcome.step == "Step 2/3 : RUN pip install nope"
    assert outcome.tail == "ERROR: No matching distribution"
    assert outcome.error == "exit code 1"
    ok = parse_build_stream([{"stream": "Step 1/1 : FROM base\n"}, {"aux": {"ID": "sha256:123"}}])
    assert (ok.image_id, ok.error) == ("sha256:123", None)


def test_sandbox_options_defaults_and_docker_limits() -> None:
    options = SandboxOptions()
    assert 0 < options.cpus <= 2
    limits = SandboxOptions(cpus=1.5, memory="512m", pids=64).docker_limits()
    assert limits == {
        "nano_cpus": 1_500_000_000,
        "mem_limit": 512 * 1024**2,
        "memswap_limit": 512 * 1024**2,
        "pids_limit": 64,
    }
    assert SandboxOptions(memory=64 * 1024**2).memory_bytes == 64 * 1024**2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cpus": 0}, "cpus"),
        ({"cpus": float("nan")}, "cpus"),
        ({"cpus": "2"}, "cpus"),
        ({"memory": "2 gigabytes"}, "memory"),
        ({"memory": "1k"}, "at least 6 MiB"),
        ({"memory": True}, "memory"),
        ({"pids": 0}, "pids"),
        ({"pids": 2.5}, "pids"),
    ],
)
def test_bad_sandbox_options_refused_naming_the_field(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        SandboxOptions(**kwargs)


def test_sandbox_options_must_be_the_options_class() -> None:
    with pytest.raises(TypeError, match="sandbox_options must be a SandboxOptions"):
        SandboxEnvBase("CartPole-v1", sandbox_options={"cpus": 1})


def test_sandbox_keywords_split_from_env_kwargs() -> None:
    settings, rest = SandboxSettings.split({"packages": ["numpy"], "max_episode_steps": 5})
    assert settings.packages == ("numpy",)
    assert rest == {"max_episode_steps": 5}


@pytest.mark.parametrize("module", [rlmesh, rlmesh.numpy, rlmesh.jax])
def test_backend_sandbox_classes_show_every_keyword(module: object) -> None:
    keywords = [p.name for p in SandboxSettings.parameters()]
    assert "sandbox_options" in keywords
    single = inspect.signature(module.SandboxEnv.__init__)  # type: ignore[attr-defined]
    vector = inspect.signature(module.SandboxVectorEnv.__init__)  # type: ignore[attr-defined]
    assert list(single.parameters) == ["self", "source", *keywords, "gym_make_kwargs"]
    expected = ["self", "source", "num_envs", "vectorization_mode", *keywords, "env_make_kwargs"]
    assert list(vector.parameters) == expected
    assert single.parameters["connect_timeout_seconds"].default == 60.0
    for cls in (SandboxEnvBase, SandboxVectorEnvBase, module.SandboxEnv, module.SandboxVectorEnv):  # type: ignore[attr-defined]
        doc = inspect.cleandoc(cls.__doc__ or "")
        for name in ["source", *keywords]:
            assert f"\n    {name}: " in doc, (cls, name)  # an Args entry, indented like the others


def test_sandbox_options_exported_publicly() -> None:
    import rlmesh.sandbox

    assert rlmesh.SandboxOptions is rlmesh.sandbox.SandboxOptions
    assert rlmesh.numpy.SandboxOptions is rlmesh.sandbox.SandboxOptions
    assert rlmesh.jax.SandboxOptions is rlmesh.sandbox.SandboxOptions
