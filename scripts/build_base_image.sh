#!/usr/bin/env bash
# Build rlmesh/python-base:3.11 without any image registry (debootstrap + docker import).
#
# Usage: scripts/build_base_image.sh [IMAGE_TAG]   (default: rlmesh/python-base:3.11)
# Environment: RLMESH_BASE_MIRROR overrides the Debian mirror, RLMESH_BASE_SUITE the suite,
# PYTHON the interpreter (default python3, else python).
#
# A thin wrapper over `python -m rlmesh.sandbox.base_image`: it runs that module's file
# directly, because it needs only the standard library, so it works before rlmesh's
# dependencies are installed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARGS=(--tag "${1:-rlmesh/python-base:3.11}")
[ -n "${RLMESH_BASE_MIRROR:-}" ] && ARGS+=(--mirror "$RLMESH_BASE_MIRROR")
[ -n "${RLMESH_BASE_SUITE:-}" ] && ARGS+=(--suite "$RLMESH_BASE_SUITE")

PYTHON="${PYTHON:-$(command -v python3 || command -v python || echo python3)}"
exec "$PYTHON" -c '
import runpy, sys
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
' "$ROOT/rlmesh/sandbox/base_image.py" "${ARGS[@]}"
