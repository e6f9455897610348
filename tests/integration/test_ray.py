"""Ray-hosted env servers, tested with a real Ray inside a loopback-only network namespace.

Ray binds every interface and probes outside addresses, so it never starts on the host network
here: this module runs the scenario modules (``ray_*_scenarios.py``) once, in a fresh network
and PID namespace that has only loopback, and reports each scenario as one test. Without the
``ray`` extra or a way to make the namespace (``unshare``, ``ip``, root or user namespaces)
the tests skip with the reason (in CI, where both are installed, they fail instead).
"""

from __future__ import annotations

import ast
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

HERE = Path(__file__).parent
REPO_ROOT = HERE.parents[1]
SCENARIO_FILES = ("ray_local_scenarios.py", "ray_cluster_scenarios.py")
INNER_TIMEOUT_S = 1200


def _scenario_ids() -> list[str]:
    """``file::test_name`` of every test function in the scenario modules (read, not imported)."""
    ids = []
    for name in SCENARIO_FILES:
        tree = ast.parse((HERE / name).read_text())
        ids += [
            f"{name}::{node.name}"
            for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
        ]
    return ids


@pytest.fixture(scope="module")
def scenario_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Run the scenario modules once inside the namespace; ``{id: (outcome, details)}``."""
    from needs import require_loopback_namespace

    require_loopback_namespace()
    from rlmesh.integrations.ray.namespace import run_in_namespace

    report = tmp_path_factory.mktemp("ray") / "report.xml"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += [str(HERE / name) for name in SCENARIO_FILES]
    path = os.pathsep.join(filter(None, [str(HERE.parent), str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    done = run_in_namespace(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=INNER_TIMEOUT_S,
    )
    if not report.exists():
        pytest.fail(
            f"the scenario run wrote no report (exit {done.returncode}):\n{done.stdout[-4000:]}{done.stderr[-4000:]}"
        )
    return _parse_report(report, done.stdout[-4000:])


def _parse_report(report: Path, tail: str) -> dict[str, tuple[str, str]]:
    results = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        module = case.get("classname", "").rsplit(".", 1)[-1]
        name = case.get("name", "").split("[", 1)[0]
        key = f"{module}.py::{name}"
        outcome, details = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, details = child.tag, f"{child.get('message', '')}\n{child.text or ''}"
        previous = results.get(key)
        if previous is None or previous[0] == "passed":  # a parametrised test fails if any case fails
            results[key] = (outcome, details)
    results.setdefault("__tail__", ("", tail))
    return results


@pytest.mark.timeout(INNER_TIMEOUT_S + 60)
@pytest.mark.parametrize("scenario", _scenario_ids())
def test_ray_scenario(scenario_results: dict[str, tuple[str, str]], scenario: str) -> None:
    outcome, details = scenario_results.get(scenario, ("missing", scenario_results["__tail__"][1]))
    if outcome == "skipped":
        pytest.skip(details.strip())
    assert outcome == "passed", f"{scenario} {outcome} inside the namespace:\n{details}"
