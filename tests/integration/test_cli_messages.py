"""What a user sees from ``rlmesh serve``: one clear line on error, the banner, the cwd on the path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import rlmesh.numpy as rn
from rlmesh.cli import describe_error, display_address


def _serve(*args: str, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rlmesh", "serve", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def test_error_is_one_line_without_traceback() -> None:
    result = _serve("NoSuchEnv-v9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rlmesh serve: error:")]
    assert len(lines) == 1 and "NoSuchEnv" in lines[0] and "--debug" in lines[0]


def test_debug_shows_the_traceback() -> None:
    result = _serve("NoSuchEnv-v9", "--debug")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_missing_module_names_the_extra() -> None:
    error = ModuleNotFoundError("No module named 'gymnasium'", name="gymnasium")
    assert describe_error(error) == 'gymnasium is not installed; install it with: pip install "rlmesh[gymnasium]"'
    other = ModuleNotFoundError("No module named 'nopkg'", name="nopkg")
    assert describe_error(other) == "No module named 'nopkg'"


def test_unix_address_is_shown_as_given() -> None:
    assert display_address("ipc:///tmp/x.sock", "unix:///tmp/x.sock") == "unix:///tmp/x.sock"
    assert display_address("ipc:///tmp/x.sock", "ipc:///tmp/x.sock") == "ipc:///tmp/x.sock"
    assert display_address("tcp://127.0.0.1:4242", "tcp://127.0.0.1:0") == "tcp://127.0.0.1:4242"


def test_module_source_resolves_from_the_working_directory(tmp_path: Path) -> None:
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "envs.py").write_text(
        "import gymnasium\n\n\ndef make_env(limit=7):\n"
        "    return gymnasium.make('CartPole-v1', max_episode_steps=limit)\n"
    )
    ready = tmp_path / "ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "rlmesh", "serve", "userpkg.envs:make_env", "--num-envs", "2",
         "--kwarg", "limit=3", "--address", f"unix://{tmp_path}/env.sock", "--ready-file", str(ready)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = process.stdout.readline() if process.stdout else ""
        assert f"unix://{tmp_path}/env.sock" in banner and "2 lanes" in banner, banner
        with rn.RemoteVectorEnv(ready.read_text().strip()) as env:
            env.reset(seed=0)
            for _ in range(3):
                _, _, terminated, truncated, _ = env.step([0, 0])
            assert list(truncated | terminated) == [True, True]
    finally:
        process.terminate()
        assert process.wait(30) == 0
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
