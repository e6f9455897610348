"""Every ``>>>`` example in the package's docstrings runs, or says why not (``+SKIP``).

Examples that need a server at a fixed address, Docker or a Ray cluster carry
``# doctest: +SKIP`` on each statement; the others run here exactly as a reader would type them.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

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


def _with_examples(name: str) -> bool:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    return any(test.examples for test in finder.find(module))


MODULES = [name for name in _modules() if name != "rlmesh.__main__" and _with_examples(name)]


def test_the_package_has_docstring_examples() -> None:
    assert {"rlmesh.launch", "rlmesh.tensor", "rlmesh.checks"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {name} failed (see above)"
