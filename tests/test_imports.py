"""The import graph of hardneg/ (module-level and function-level imports alike): no circle, and only the CLI (the top
adapter) imports serving/ or pipelines/. And the test suite's own layout: every test module declares its group."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[1] / "hardneg"


def _imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def _graph() -> dict[str, set[str]]:
    mods = {p.stem: p for p in PKG.glob("*.py") if p.stem != "__init__"}
    return {
        m: {i.split(".")[1] for i in _imports(p) if i.startswith("hardneg.") and i.split(".")[1] in mods}
        - {m}
        for m, p in mods.items()
    }


def test_no_import_circle_in_hardneg():
    g = _graph()
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(g[m]):
            assert state.get(n) != 1, f"import circle: {' -> '.join([*path, m, n])}"
            if n not in state:
                visit(n, [*path, m])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [])


def test_only_the_cli_imports_serving_or_pipelines():
    for p in PKG.glob("*.py"):
        bad = {i for i in _imports(p) if i.split(".")[0] in ("serving", "pipelines", "components")}
        assert p.stem == "cli" or not bad, f"{p.name} imports {sorted(bad)}"


def test_the_graph_is_read_for_real():
    g = _graph()
    assert "evaluate" in g["train"] and "errors" in g["mine"]  # the checker sees function-level imports


TEST_GROUPS = {"unit", "adapter", "e2e"}


def _module_marks(path: Path) -> set[str]:
    """The ``pytest.mark.<name>`` names in a module's top-level ``pytestmark`` assignment."""
    marks: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and getattr(sub.value, "attr", None) == "mark":
                    marks.add(sub.attr)
    return marks


def test_every_test_module_declares_exactly_one_group():
    """README "Tests": ``pytest -m unit|adapter|e2e``. A new module without ``pytestmark = pytest.mark.<group>``
    (or with two groups) fails here, so every test runs in exactly one group."""
    import tomllib

    tests = Path(__file__).resolve().parent
    registered = tomllib.loads((tests.parent / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert TEST_GROUPS <= {m.split(":")[0] for m in registered["markers"]}
    modules = sorted(tests.glob("test_*.py"))
    assert len(modules) > 20
    bad = {p.name: sorted(_module_marks(p) & TEST_GROUPS) for p in modules}
    assert {n: g for n, g in bad.items() if len(g) != 1} == {}
    assert _module_marks(Path(__file__)) & TEST_GROUPS == {"unit"}  # the reader sees real declarations


def test_no_function_over_80_lines_without_a_reason():
    """hardneg/ functions stay under 80 lines unless the line above the def says why (``# long: <reason>``)."""
    import ast

    long = []
    for p in sorted(PKG.rglob("*.py")):
        src = p.read_text(encoding="utf-8")
        lines = src.splitlines()
        for n in ast.walk(ast.parse(src)):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.end_lineno - n.lineno + 1 > 80:
                first = n.decorator_list[0].lineno if n.decorator_list else n.lineno
                above = lines[first - 2].strip() if first > 1 else ""
                if not (above.startswith("# long:") and len(above) > len("# long: ") + 10):
                    long.append(
                        f"{p.relative_to(PKG.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
                    )
    assert not long, "split these or say why above the def (# long: <reason>):\n" + "\n".join(long)
