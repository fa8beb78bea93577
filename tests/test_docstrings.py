"""Docstring examples are code: every `>>>` example in t2l runs (doctest) and shows what it prints."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import t2l


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(t2l.__path__, "t2l."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    names.append(info.name)
    return sorted(names)


def test_examples_are_found():
    assert "t2l.generator" in _modules_with_examples()


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(module, globs=dict(vars(module))) if t.examples]
    assert tests, f"{name} mentions >>> but doctest finds no example"
    for t in tests:
        runner.run(t, out=lambda s: None)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples in {name} fail (python -m doctest -v)"
    )
