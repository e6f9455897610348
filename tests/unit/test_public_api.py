"""The public surface is deliberate: a change to it must change this test too."""

import subprocess
import sys

import rlmesh

EXPECTED_CORE = {
    "AsyncCallError",
    "BadRequestError",
    "EndpointConnectionError",
    "EndpointTimeoutError",
    "EnvBusyError",
    "EnvContract",
    "EnvServer",
    "InvalidActionError",
    "ProtocolError",
    "RLMeshError",
    "RemoteEnv",
    "RemoteEnvBase",
    "RemoteEnvError",
    "RemoteVectorEnv",
    "RemoteVectorEnvBase",
    "SandboxError",
    "ServeOptions",
    "SpaceSpec",
    "Tensor",
    "__version__",
    "spaces",
    "specs",
    "Model",
    "ModelBase",
    "RunResult",
    "EpisodeResult",
    "run",
    "RANDOM_SAMPLE",
    "SandboxEnv",
    "SandboxVectorEnv",
    "SandboxOptions",
    "SandboxBuildError",
    "SandboxStartupError",
}
EXPECTED_BACKEND = {
    "RemoteEnv",
    "RemoteVectorEnv",
    "Model",
    "SandboxEnv",
    "SandboxVectorEnv",
    "SandboxOptions",
    "space_from_spec",
    "asarray",
}
EXPECTED_NUMPY = EXPECTED_BACKEND | {"NumpyValue"}
EXPECTED_JAX = EXPECTED_BACKEND | {"ensure_available", "from_array", "JaxValue", "JAX_BRIDGE"}


def test_core_surface_has_not_drifted() -> None:
    assert set(rlmesh.__all__) == EXPECTED_CORE
    for name in rlmesh.__all__:
        assert hasattr(rlmesh, name), name
        obj = getattr(rlmesh, name)
        if callable(obj) and not isinstance(obj, type(rlmesh)):
            assert obj.__doc__, f"{name} has no docstring"


def test_backend_surfaces_match_the_seed() -> None:
    import rlmesh.jax
    import rlmesh.numpy

    assert set(rlmesh.numpy.__all__) == EXPECTED_NUMPY
    assert set(rlmesh.jax.__all__) == EXPECTED_JAX
    for module in (rlmesh.numpy, rlmesh.jax):
        for name in module.__all__:
            assert getattr(module, name).__doc__ or name.endswith("Value"), f"{module.__name__}.{name}"
    assert rlmesh.jax.SandboxEnv.client_class is rlmesh.jax.RemoteEnv
    assert rlmesh.jax.SandboxVectorEnv.client_class is rlmesh.jax.RemoteVectorEnv
    assert issubclass(rlmesh.jax.Model, rlmesh.ModelBase)


def test_backend_classes_show_their_real_signature_and_parameters() -> None:
    import inspect

    import rlmesh.jax
    import rlmesh.numpy

    for module in (rlmesh, rlmesh.numpy, rlmesh.jax):
        for name in ("RemoteEnv", "RemoteVectorEnv", "Model", "SandboxEnv", "SandboxVectorEnv"):
            cls = getattr(module, name)
            parameters = inspect.signature(cls).parameters
            assert "args" not in parameters, f"{module.__name__}.{name}{inspect.signature(cls)}"
            for parameter in parameters.values():
                if parameter.kind is not parameter.VAR_KEYWORD and not name.startswith("Sandbox"):
                    assert f"{parameter.name}:" in cls.__doc__, (
                        f"{module.__name__}.{name} does not document {parameter.name}"
                    )
            assert getattr(cls, "__final__", False), f"{module.__name__}.{name} is not final"


def test_errors_subclass_the_builtins_users_catch() -> None:
    assert issubclass(rlmesh.EndpointConnectionError, ConnectionError)
    assert issubclass(rlmesh.EnvBusyError, ConnectionError)
    assert issubclass(rlmesh.EndpointTimeoutError, TimeoutError)
    assert issubclass(rlmesh.ProtocolError, ValueError)
    assert issubclass(rlmesh.InvalidActionError, ValueError)
    assert issubclass(rlmesh.RemoteEnvError, RuntimeError)


def test_core_imports_without_optional_extras() -> None:
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'jax', 'jaxlib', 'flax', 'optax', 'chex', 'docker', 'gymnasium', 'tqdm'}:\n"
        "            raise ImportError(f'blocked {name}')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import rlmesh, rlmesh.numpy, rlmesh.jax\n"
        "assert 'jax' not in sys.modules and 'docker' not in sys.modules\n"
        "try:\n"
        "    rlmesh.jax.ensure_available()\n"
        "except ImportError as e:\n"
        "    assert 'rlmesh[jax]' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('ensure_available did not raise')\n"
        "try:\n"
        "    rlmesh.spaces.Discrete(2).to_gymnasium_space()\n"
        "except ImportError as e:\n"
        "    assert 'rlmesh[gymnasium]' in str(e), e\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_integrations_live_under_rlmesh_not_top_level() -> None:
    import rlmesh.integrations

    assert rlmesh.integrations.__name__ == "rlmesh.integrations"
    result = subprocess.run(
        [sys.executable, "-c", "import integrations"], capture_output=True, text=True, cwd="/", timeout=60
    )
    assert result.returncode != 0
