"""Every ``>>>`` example in the package's docstrings runs, or says why not (``+SKIP``).

Examples that need a server at a fixed address, Docker or a Ray cluster carry
``# doctest: +SKIP`` on each statement; the others run here exactly as a reader would type them.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from typing import Any

import pytest

import rlmesh
import rlmesh.integrations


def _modules() -> list[str]:
    names = []
    for package in (rlmesh, rlmesh.integrations):
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            names.append(info.name)
    return sorted(set(names))


def _cases() -> list[Any]:
    """One case per module with examples; a module whose optional extra is missing is skipped."""
    finder = doctest.DocTestFinder(exclude_empty=True)
    cases = []
    for name in _modules():
        if name == "rlmesh.__main__":
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as error:  # an optional extra (flax, ray, ...) is not installed
            cases.append(pytest.param(name, marks=pytest.mark.skip(reason=f"{name} needs {error.name}")))
            continue
        if any(test.examples for test in finder.find(module)):
            cases.append(name)
    return cases


CASES = _cases()


def test_the_package_has_docstring_examples() -> None:
    assert {"rlmesh.launch", "rlmesh.tensor", "rlmesh.checks"} <= set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see above)"
