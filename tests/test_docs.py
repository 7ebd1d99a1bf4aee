"""The front page and the documentation site cannot rot: the README stays short, its Python runs
and prints what it says, every `npti` command written anywhere in README.md or docs/ parses with
the CLI as it is, every Python block compiles and names only what the package has, and the API
reference lists exactly `npti_lens.__all__`. (The site itself is built with --strict by CI.)"""

from __future__ import annotations

import ast
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

import npti_lens
from npti_lens.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)
SHELL_VARS = {"${T}": "Extraversion", "${P}": "high", "$M": "some/model", "$T": "Extraversion", "$P": "high",
              "$G": "1.0", "$F": "out/x.jsonl"}  # fmt: skip


def blocks(page: Path, lang: str) -> list[str]:
    return [body for kind, body in FENCE.findall(page.read_text(encoding="utf-8")) if kind == lang]


def npti_commands(block: str) -> list[str]:
    """Every `npti ...` invocation of a bash block: comments dropped, continuations joined, and
    commands after `;`, `&&` or `do` split out."""
    text = re.sub(r"#[^\n]*", "", block.replace("\\\n", " "))
    out = []
    for line in text.splitlines():
        for part in re.split(r";|&&|\bdo\b|\|", line):
            part = part.strip()
            if part.startswith("npti "):
                out.append(part)
    return out


def test_the_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, len(lines)
    for link in re.findall(r"\]\((docs/[^)#]+)", "\n".join(lines)):
        assert (ROOT / link).is_file(), link


def test_every_npti_command_in_the_docs_parses():
    seen = 0
    for page in PAGES:
        for block in blocks(page, "bash"):
            for cmd in npti_commands(block):
                for var, value in SHELL_VARS.items():
                    cmd = cmd.replace(var, value)
                cmd = re.sub(r"\$\(basename [^)]*\)", "x", cmd)
                argv = shlex.split(cmd)[1:]
                try:
                    build_parser(argv).parse_args(argv)
                except SystemExit as e:
                    pytest.fail(f"{page.name}: `{cmd}` does not parse (exit {e.code})")
                seen += 1
    assert seen > 40, seen


def _names_used(tree: ast.AST) -> tuple[set[str], set[tuple[str, str]]]:
    """`nl.X` attributes (with `import npti_lens as nl`) and `from npti_lens[.mod] import X` names."""
    attrs, froms = set(), set()
    alias = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import)
        for a in n.names
        if a.name == "npti_lens"
    }
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in alias:
            attrs.add(n.attr)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("npti_lens"):
            froms |= {(n.module, a.name) for a in n.names}
    return attrs, froms


def test_every_python_block_compiles_and_names_what_exists():
    import importlib

    seen = 0
    for page in PAGES:
        for block in blocks(page, "python"):
            tree = ast.parse(block, filename=str(page))
            attrs, froms = _names_used(tree)
            assert attrs <= set(npti_lens.__all__), (page.name, attrs - set(npti_lens.__all__))
            for module, name in froms:
                assert hasattr(importlib.import_module(module), name), (page.name, module, name)
            seen += 1
    assert seen >= 4


def test_the_readme_python_runs_and_prints_what_it_says(monkeypatch):
    monkeypatch.chdir(ROOT)
    (code,) = blocks(ROOT / "README.md", "python")
    said = [
        ln.removeprefix("# ").removesuffix("...").strip() for ln in code.splitlines() if ln.startswith("# ")
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})  # noqa: S102 - the README's own example
    printed = out.getvalue().splitlines()
    assert len(printed) == len(said) == 2
    for got, want in zip(printed, said, strict=True):
        assert got.startswith(want), (got, want)


def test_the_api_reference_lists_every_public_name():
    from npti_lens import _WHERE

    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    listed = re.findall(r"^::: npti_lens\.([\w.]+)$", text, re.M)
    assert sorted(listed) == sorted(f"{mod}.{name}" for name, mod in _WHERE.items())
