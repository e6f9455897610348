"""Drive the original RLMesh 0.1.0 (PyPI) from its own virtual environment, in a subprocess.

It shares our distribution and import name, so it must never be installed into the
project's environment. ``ensure_venv()`` builds a private venv once (cached under
``~/.cache/rlmesh-bench``, or ``RLMESH_ORIGINAL_VENV``); ``run_script()`` runs a measurement
script there and returns the JSON it prints. Every caller treats ``None`` as "column skipped".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.peer_venv import PeerVenv

ORIGINAL = PeerVenv(
    "rlmesh-0.1.0", ["rlmesh==0.1.0", "gymnasium[classic-control]>=1.0", "numpy"], "RLMESH_ORIGINAL_VENV"
)


def ensure_venv(timeout: float = 600) -> Path | None:
    """The venv's python, building it on first use; None when it cannot be built."""
    return ORIGINAL.ensure(timeout)


def run_script(script: str, *args: str, timeout: float = 600) -> dict[str, Any] | None:
    """Run ``script`` with the original rlmesh; returns the JSON object of its last stdout line."""
    return ORIGINAL.run_script(script, *args, timeout=timeout)
