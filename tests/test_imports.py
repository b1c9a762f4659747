"""The import graph of hardneg/ (module-level and function-level imports alike): no circle, and only the CLI (the top
adapter) imports serving/ or pipelines/."""

from __future__ import annotations

import ast
from pathlib import Path

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
