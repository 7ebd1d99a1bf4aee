"""Tiny randomly initialised HF models of five families, built and saved locally (never the hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jaxtyping import install_import_hook

# Every jaxtyping shape annotation in the package is checked at runtime while the tests run.
with install_import_hook("npti_lens", "beartype.beartype"):
    import importlib
    import pkgutil

    import npti_lens
    from npti_lens.vllm.engine import vllm_available

    for _m in pkgutil.walk_packages(npti_lens.__path__, "npti_lens."):
        if _m.name.endswith("__main__") or (_m.name == "npti_lens.vllm.check" and vllm_available()):
            continue  # vllm.check subclasses vLLM's logits processor: only where vLLM imports
        importlib.import_module(_m.name)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
from npti_lens.core.threads import set_threads  # noqa: E402

set_threads(1)  # the tests' models are tiny, and their timings need not be fast on a busy machine

from tests.helpers import FAMILIES, build_tiny, require  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "needs(what, missing): needs what CI installs (tests/helpers.needs)")


# The tests run on two workers (pytest-xdist, `-n 2 --dist loadgroup` in pyproject.toml). The vLLM
# engines and servers share one worker, one at a time: each engine takes the cores it finds, and
# they share vLLM's compile cache. The test_vllm_ modules go there whole; a test elsewhere that
# starts vLLM carries @pytest.mark.xdist_group("engines") itself. Everything else fills the other.
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name.startswith("test_vllm_"):
            item.add_marker(pytest.mark.xdist_group("engines"))


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        require(mark.kwargs["what"], mark.kwargs["missing"])


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {f: build_tiny(f, root / f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    from npti_lens.model.load import load_model

    return {f: load_model(str(d)) for f, d in tiny_dirs.items()}
