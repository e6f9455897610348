"""The ``rlmesh[ray]`` extra: optional at import, clear when missing; namespace helpers."""

from __future__ import annotations

import subprocess
import sys

import pytest

BLOCK_RAY = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] == 'ray':\n"
    "            raise ImportError(f'blocked {name}')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def test_rlmesh_and_other_integrations_import_without_ray() -> None:
    code = BLOCK_RAY + (
        "import rlmesh, rlmesh.numpy, rlmesh.cli, rlmesh.integrations\n"
        "assert 'ray' not in sys.modules\n"
        "try:\n"
        "    import rlmesh.integrations.ray\n"
        "except ImportError as e:\n"
        "    assert 'pip install \"rlmesh[ray]\"' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('no ImportError')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_serve_ray_without_ray_names_the_extra() -> None:
    code = (
        BLOCK_RAY + "from rlmesh.cli import main\nsys.exit(main(['serve', 'CartPole-v1', '--ray', '--servers', '2']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert 'pip install "rlmesh[ray]"' in result.stderr


def test_namespace_command_and_loopback_parsing() -> None:
    pytest.importorskip("ray", reason="needs the rlmesh[ray] extra")
    from rlmesh.integrations.ray import namespace

    command = namespace.namespace_command(["python", "-c", "pass"])
    assert command[0] == "unshare" and "--net" in command and "--pid" in command
    assert command[-3:] == ["python", "-c", "pass"]
    with pytest.raises(ValueError, match="needs a command"):
        namespace.namespace_command([])
    assert namespace._is_loopback("127.0.0.1:80")
    assert namespace._is_loopback("[::ffff:127.0.0.1]:41985")
    assert namespace._is_loopback("[::1]:22")
    assert not namespace._is_loopback("0.0.0.0:22")
    assert not namespace._is_loopback("*:22")
    assert not namespace._is_loopback("[::]:22")
    assert not namespace._is_loopback("10.1.2.3:6379")
