"""The package's layering: imports point down only (imports inside functions count too), no circle,
no module over 400 lines, and `npti --help` loads no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "npti_lens"

# Bottom to top. A module may import its own layer and the ones below, never one above.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"constants", "errors", "io", "prompts", "inventory", "bench", "organism", "threads"}),
    ("model", {"model", "sites", "gguf", "cvector"}),
    ("generation", {"generation"}),
    ("statistics and interventions", {"record", "neurons", "induction"}),
    ("selection, directions and protocol", {"select", "directions", "protocol", "readout"}),
    (
        "engines",
        {
            "vllm",
            "vllm.args",
            "vllm.ops",
            "vllm.recording",
            "vllm.resources",
            "vllm.worker",
            "vllm.engine",
            "vllm.check",
            "vllm.serve",
        },
    ),
    (
        "evaluation",
        {
            "score",
            "fluency",
            "classifier",
            "llm",
            "judge",
            "capability",
            "analysis",
            "administer",
            "figures",
            "databuild",
            "evidence",
            "readers",
            "validity",
            "control",
            "curves",
            "report",
            "monitor_report",
            "organism.corpus",
            "organism.judge",
            "organism.train",
        },
    ),  # fmt: skip
    ("workflow", {"answers", "search", "merge", "scoring", "ablation", "tune", "judging", "monitoring"}),
    ("apps", {"demo", "demo_real", "demo_report", "dose"}),
    (
        "front ends",
        {
            "cli",
            "cli._common",
            "cli.method",
            "cli.answer",
            "cli.evaluate",
            "cli.score",
            "cli.figures",
            "cli.organism",
            "cli.tune",
            "cli.serve",
            "cli.monitor",
            "cli.__main__",
            "",
        },
    ),  # fmt: skip  ("" is the package face)
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}


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


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER_OF), set(_modules()) ^ set(LAYER_OF)


def test_imports_point_down_and_form_no_circle():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    upward = [
        f"{m} ({LAYERS[LAYER_OF[m]][0]}) imports {d} ({LAYERS[LAYER_OF[d]][0]})"
        for m, deps in graph.items()
        for d in deps
        if LAYER_OF[d] > LAYER_OF[m]
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
    fake = tmp_path / "generate.py"
    fake.write_text("def f():\n    from npti_lens.cli import main\n")
    deps = _imports("generation", fake, _modules())
    assert deps == {"cli"} and LAYER_OF["cli"] > LAYER_OF["generation"]
    face = tmp_path / "search.py"
    face.write_text("from npti_lens import __version__\nfrom npti_lens import figures\n")
    assert _imports("search", face, _modules()) == {"", "figures"}


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
