"""The package's layering: imports point down only (imports inside functions count too), no circle,
no module over 400 lines, and `npti --help` loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "npti_lens"

# Bottom to top, one floor per subpackage (the folder names are the architecture). A module may
# import its own floor and the ones below, never one above; "" is the package face, on top.
FLOORS: list[str] = [
    "core",  # constants, errors, files, threads
    "inputs",  # question, persona and inventory files, prompts, shipped data and protocols
    "model",  # loading, GGUF, hook sites, the decode loop
    "method",  # statistics, neuron sets, induction, selection, directions, readout, protocols
    "vllm",  # the engine for scale
    "evaluation",  # evidence, positive control, capability, profiles, figures
    "organism",  # the model organism's corpus and training
    "judges",  # the judge registry and every judge
    "workflows",  # what every front end calls
    "demos",  # the demos, as stages over one state
    "cli",  # the front end
    "",  # the package face
]
LAYERS: list[tuple[str, set[str]]] = [(f or "the package face", set()) for f in FLOORS]


def _floor(module: str) -> int:
    return FLOORS.index(module.partition(".")[0]) if module.partition(".")[0] in FLOORS else -1


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, at any depth of its code."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1] if package else []
                base = ".".join([*up, base] if base else up)
                base = f"npti_lens.{base}" if base else "npti_lens"
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            if t != "npti_lens" and not t.startswith("npti_lens."):
                continue
            rel = t.removeprefix("npti_lens").removeprefix(".")
            while rel and rel not in modules:
                rel = rel.rpartition(".")[0]
            if rel in modules and rel != name:
                # `from npti_lens import figures` names the module, not the package face
                if (
                    rel == ""
                    and isinstance(node, ast.ImportFrom)
                    and all(f"{a.name}" in modules for a in node.names)
                ):
                    continue
                found.add(rel)
    return found


def test_every_module_is_in_a_floor():
    """No module beside the subpackages: a new file goes into the floor it belongs to."""
    loose = [m for m in _modules() if _floor(m) < 0 or (m and "." not in m and m not in FLOORS)]
    assert not loose, loose


def test_imports_point_down_and_form_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    upward = [
        f"{m} ({FLOORS[_floor(m)] or 'face'}) imports {d} ({FLOORS[_floor(d)] or 'face'})"
        for m, deps in graph.items()
        for d in deps
        if _floor(d) > _floor(m)
    ]
    assert not upward, upward
    # no circle: a depth-first search finds no back edge
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            assert state.get(d) != 1, f"import circle: {' -> '.join([*stack, m, d])}"
            if d not in state:
                visit(d, [*stack, m])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])


def test_the_checker_sees_an_upward_import_and_a_circle(tmp_path):
    """The check itself can fail: an import of the CLI from the spine is caught."""
    fake = tmp_path / "generation.py"
    fake.write_text("def f():\n    from npti_lens.cli import main\n")
    deps = _imports("model.generation", fake, _modules())
    assert deps == {"cli"} and _floor("cli") > _floor("model.generation")
    rel = tmp_path / "search.py"
    rel.write_text("from ..evaluation import figures\nfrom npti_lens import __version__\n")
    assert _imports("workflows.search", rel, _modules()) == {"evaluation", "evaluation.figures", ""}


def test_no_module_over_400_lines():
    long = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_help_imports_no_torch():
    code = (
        "import sys\nfrom npti_lens.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformer_lens', 'transformers') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: []" in res.stdout and "usage: npti" in res.stdout


def test_import_linter_keeps_the_same_contract():
    """The floors as an import-linter layers contract (pyproject.toml), checked by its own graph."""
    lint = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=PKG.parent)
    assert res.returncode == 0 and "1 kept, 0 broken" in res.stdout, res.stdout[-2000:]
    contract = res.stdout
    assert all(f"npti_lens.{f}" in (PKG.parent / "pyproject.toml").read_text() for f in FLOORS if f), contract


def test_no_module_is_named_after_a_standard_library_module():
    """`io.py` or `select.py` beside a script shadows the standard library's when run from there."""
    names = {p.stem for p in PKG.rglob("*.py")} | {p.name for p in PKG.rglob("*") if p.is_dir()}
    assert not names & set(sys.stdlib_module_names), sorted(names & set(sys.stdlib_module_names))
