"""The package face: every public name is what it says (a class, a function, the version string) in
every order a newcomer may touch it, before and after a model is loaded (loading imports most
submodules, which once shadowed the functions `generate` and `induce` with their modules)."""

from __future__ import annotations

import inspect
import json
import pkgutil
import subprocess
import sys

import pytest

import npti_lens

CHECK = """
import inspect, json, sys
import npti_lens as nl
order = sys.argv[1]
if order == "after":
    nl.load_model("organism")
kinds = {}
for name in nl.__all__:
    value = getattr(nl, name)
    exec(f"from npti_lens import {name} as _v", globals())
    assert _v is value, name
    kinds[name] = "str" if isinstance(value, str) else "class" if inspect.isclass(value) else (
        "function" if callable(value) and not inspect.ismodule(value) else type(value).__name__)
print(json.dumps(kinds))
"""


def expected_kind(name: str) -> str:
    return "str" if name == "__version__" else "class" if name[0].isupper() else "function"


def test_no_public_name_is_a_submodule_name():
    submodules = {m.name for m in pkgutil.iter_modules(npti_lens.__path__)}
    assert not set(npti_lens.__all__) & submodules, set(npti_lens.__all__) & submodules


@pytest.mark.parametrize("order", ["before", "after"])
def test_every_public_name_has_its_kind(order):
    res = subprocess.run([sys.executable, "-c", CHECK, order], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    kinds = json.loads(res.stdout.strip().splitlines()[-1])
    assert kinds == {n: expected_kind(n) for n in npti_lens.__all__}


def test_the_functions_are_the_ones_documented():
    from npti_lens import generate, induce

    assert inspect.isfunction(generate) and "model" in inspect.signature(generate).parameters
    assert inspect.isfunction(induce) and "model" in inspect.signature(induce).parameters
