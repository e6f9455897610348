"""Drive the original RLMesh 0.1.0 (PyPI) from its own virtual environment, in a subprocess.

It shares our distribution and import name, so it must never be installed into the
project's environment. ``ensure_venv()`` builds a private venv once (cached under
``~/.cache/rlmesh-bench``); ``run_script()`` runs a measurement script there and returns
the JSON it prints. Every caller treats ``None`` as "column skipped".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

VENV = Path(os.environ.get("RLMESH_ORIGINAL_VENV", Path.home() / ".cache" / "rlmesh-bench" / "rlmesh-0.1.0"))
PACKAGES = ["rlmesh==0.1.0", "gymnasium[classic-control]>=1.0", "numpy"]


def ensure_venv(timeout: float = 600) -> Path | None:
    """The venv's python, building it on first use; None when it cannot be built."""
    python = VENV / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, capture_output=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PACKAGES], check=True, capture_output=True, timeout=timeout
        )
    except (subprocess.SubprocessError, OSError) as error:
        print(f"original rlmesh 0.1.0 unavailable, skipping its column: {error}", file=sys.stderr)
        return None
    return python


def run_script(script: str, *args: str, timeout: float = 600) -> dict[str, Any] | None:
    """Run ``script`` with the original rlmesh; returns the JSON object of its last stdout line."""
    python = ensure_venv()
    if python is None:
        return None
    try:
        result = subprocess.run(
            [str(python), "-c", script, *args], capture_output=True, text=True, timeout=timeout, cwd="/"
        )
    except subprocess.TimeoutExpired:
        print("original rlmesh run timed out; skipping its column", file=sys.stderr)
        return None
    if result.returncode != 0:
        print(f"original rlmesh run failed; skipping its column:\n{result.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])
