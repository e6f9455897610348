"""Every code block in README.md runs, as a new user would run it.

Python blocks run in a fresh interpreter each, from a scratch directory, while the README's own
``rlmesh serve CartPole-v1 --address tcp://127.0.0.1:5555`` line serves in the background (the
snippets connect to that address, as they would after a user ran that line in a terminal).
Shell blocks run line by line: ``rlmesh serve ...`` lines must print their banner and stop cleanly
on SIGTERM; other lines must exit 0. The set-up block's lines are the two commands that open the
README: ``.ci/run`` runs the test command, and the training command runs here in full.

An HTML comment right above a block sets how it runs: ``<!-- readme-test: sandbox -->`` (needs a
Docker engine, like the sandbox tests), ``<!-- readme-test: netns -->`` (runs inside a
loopback-only network namespace, for Ray), ``<!-- readme-test: not-a-command -->`` (a listing or
a layout, not code to run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
SERVER_LINE_ADDRESS = "tcp://127.0.0.1:5555"
BLOCK = re.compile(r"(?:<!--\s*readme-test:\s*(?P<mode>[\w-]+)\s*-->\s*\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
SETUP_PREFIX = 'pip install -e ".[all]" && '
MYPKG_ENVS = '''
import gymnasium


def make_env(difficulty: int = 0) -> gymnasium.Env:
    """A CartPole whose episodes are capped by ``difficulty`` (a stand-in for a user's env)."""
    return gymnasium.make("CartPole-v1", max_episode_steps=100 + difficulty)
'''


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README."""

    index: int
    lang: str
    code: str
    mode: str | None
    line: int

    @property
    def name(self) -> str:
        return f"L{self.line}-{self.lang or 'text'}"


def readme_blocks() -> list[Block]:
    """The README's fenced blocks, in order."""
    text = README.read_text()
    blocks = []
    for index, match in enumerate(BLOCK.finditer(text)):
        line = text.count("\n", 0, match.start("lang")) + 1
        blocks.append(Block(index, match["lang"], match["code"], match["mode"], line))
    return blocks


BLOCKS = readme_blocks()
PYTHON_BLOCKS = [b for b in BLOCKS if b.lang == "python" and b.mode != "not-a-command"]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in ("bash", "sh", "shell") and b.mode != "not-a-command"]


def test_every_block_is_run_or_declared() -> None:
    """A block is python or bash (run below) or says why it is not a command."""
    for block in BLOCKS:
        runnable = block.lang in ("python", "bash", "sh", "shell")
        assert runnable or block.mode == "not-a-command", (
            f"README block at line {block.line} ({block.lang or 'no language'}) is neither run by the tests "
            "nor marked <!-- readme-test: not-a-command -->"
        )


def test_readme_opens_with_the_two_setup_commands() -> None:
    """The first block holds exactly the main job and the test command, both after the install."""
    lines = [line for line in BLOCKS[0].code.splitlines() if line.strip()]
    assert lines == [f"{SETUP_PREFIX}python examples/ppo_cartpole.py", f"{SETUP_PREFIX}python -m pytest"]


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("RLMESH_SANDBOX_BASE_IMAGE", None) if not env.get("RLMESH_SANDBOX_BASE_IMAGE") else None
    return env


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    """A scratch project directory holding the ``mypkg.envs:make_env`` the README serves."""
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "envs.py").write_text(MYPKG_ENVS)
    return tmp_path


def _rlmesh_command(line: str) -> list[str]:
    """A README ``rlmesh ...`` line as argv for this interpreter's rlmesh."""
    argv = line.split("#", 1)[0].split()
    assert argv[0] == "rlmesh", line
    return [sys.executable, "-m", "rlmesh", *argv[1:]]


class ServeLine:
    """A README ``rlmesh serve`` line running in the background until stopped."""

    def __init__(self, line: str, cwd: Path) -> None:
        self.line = line
        self.process = subprocess.Popen(
            _rlmesh_command(line),
            cwd=cwd,
            env=_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_serving(self, timeout: float = 60.0) -> str:
        """Return the banner line once the server prints it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            banners = [line for line in self.lines if "serving" in line]
            if banners:
                return banners[0]
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"{self.line!r} did not start serving:\n{self.output}")

    def stop(self) -> int:
        """SIGTERM the server and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode


def _serve_lines() -> list[str]:
    return [
        line.strip()
        for block in SHELL_BLOCKS
        for line in block.code.splitlines()
        if line.strip().startswith("rlmesh serve")
    ]


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The README's own ``rlmesh serve ... --address tcp://127.0.0.1:5555`` line, serving."""
    lines = [line for line in _serve_lines() if SERVER_LINE_ADDRESS in line]
    assert lines, f"the README no longer serves on {SERVER_LINE_ADDRESS}, which its Python snippets use"
    server = ServeLine(lines[0], tmp_path_factory.mktemp("readme-server"))
    server.wait_serving()
    yield SERVER_LINE_ADDRESS
    assert server.stop() == 0


def _needs(block: Block, request: pytest.FixtureRequest) -> None:
    if block.mode == "sandbox" or "Sandbox" in block.code:
        request.getfixturevalue("base_image")  # a Docker engine and the offline base image, never a pull
    if block.mode == "netns":
        from needs import require_loopback_namespace

        require_loopback_namespace()


@pytest.mark.slow
@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.name)
def test_python_block_runs(block: Block, readme_server: str, user_dir: Path, request: pytest.FixtureRequest) -> None:
    """The snippet runs to completion in a fresh interpreter."""
    _needs(block, request)
    command = [sys.executable, "-c", textwrap.dedent(block.code)]
    if block.mode == "netns":
        from needs import loopback_namespace_command

        command = loopback_namespace_command(command)
    result = subprocess.run(command, cwd=user_dir, env=_environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"README block at line {block.line} failed:\n{result.stdout}\n{result.stderr}"


def _shell_lines() -> list[tuple[Block, str]]:
    pairs = []
    for block in SHELL_BLOCKS[1:]:  # the first block is the set-up pair, tested on its own
        for line in block.code.splitlines():
            # The line serving the address the Python blocks use runs as their readme_server fixture.
            if line.strip() and not line.strip().startswith("#") and SERVER_LINE_ADDRESS not in line:
                pairs.append((block, line.strip()))
    return pairs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("block", "line"), _shell_lines(), ids=[f"L{b.line}-{i}" for i, (b, _) in enumerate(_shell_lines())]
)
def test_shell_line_runs(block: Block, line: str, user_dir: Path, request: pytest.FixtureRequest) -> None:
    """``rlmesh serve`` lines start serving and stop cleanly; other lines exit 0."""
    _needs(block, request)
    if line.startswith("rlmesh serve"):
        server = ServeLine(line, user_dir)
        banner = server.wait_serving()
        assert server.stop() == 0, server.output
        assert "serving" in banner
        return
    result = subprocess.run(
        line, shell=True, cwd=user_dir, env=_environment(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"README line {line!r} failed:\n{result.stdout}\n{result.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_main_job_trains(tmp_path: Path) -> None:
    """The README's first command, less the install that CI already did, solves CartPole remotely."""
    command = BLOCKS[0].code.splitlines()[0].removeprefix(SETUP_PREFIX).split()
    assert command[:2] == ["python", "examples/ppo_cartpole.py"]
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, *command[1:], "--out-dir", str(out_dir), "--no-progress"],
        cwd=REPO_ROOT,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((out_dir / "metrics.json").read_text())["summary"]
    assert summary["mode"] != "local" and summary["servers"], summary  # trained through a launched server
    assert summary["final_eval_mean"] == 500.0, summary
    assert "final evaluation" in result.stdout
