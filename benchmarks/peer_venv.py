"""Peers that must not be installed into the project's environment, driven from a venv of their own.

A :class:`PeerVenv` builds a private virtual environment once (cached under
``~/.cache/rlmesh-bench/<name>``, or where its environment variable points) and runs
measurement scripts there in a subprocess; each script prints a JSON object on its last
stdout line. Every caller treats ``None`` as "column skipped" (with the reason on stderr).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class PeerVenv:
    """A private venv holding ``packages``.

    Args:
        name: Folder name under ``~/.cache/rlmesh-bench`` and the label used in messages.
        packages: What ``pip install`` puts there.
        location_variable: Environment variable that overrides the venv's location.
    """

    def __init__(self, name: str, packages: Sequence[str], location_variable: str) -> None:
        self.name = name
        self.packages = list(packages)
        default = Path.home() / ".cache" / "rlmesh-bench" / name
        self.path = Path(os.environ.get(location_variable, default))

    def ensure(self, timeout: float = 600) -> Path | None:
        """The venv's python, building it on first use; None when it cannot be built."""
        python = self.path / "bin" / "python"
        if python.exists():
            return python
        try:
            subprocess.run([sys.executable, "-m", "venv", str(self.path)], check=True, capture_output=True, timeout=120)
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *self.packages],
                check=True,
                capture_output=True,
                timeout=timeout,
            )
        except (subprocess.SubprocessError, OSError) as error:
            print(f"{self.name} unavailable, skipping its column: {error}", file=sys.stderr)
            return None
        return python

    def run_script(self, script: str, *args: str, timeout: float = 600) -> dict[str, Any] | None:
        """Run ``script`` in the venv; returns the JSON object of its last stdout line, or None."""
        python = self.ensure()
        if python is None:
            return None
        try:
            result = subprocess.run(
                [str(python), "-c", script, *args], capture_output=True, text=True, timeout=timeout, cwd="/"
            )
        except subprocess.TimeoutExpired:
            print(f"{self.name} run timed out; skipping its column", file=sys.stderr)
            return None
        if result.returncode != 0:
            print(f"{self.name} run failed; skipping its column:\n{result.stderr[-2000:]}", file=sys.stderr)
            return None
        return json.loads(result.stdout.strip().splitlines()[-1])
