"""The layer rule of docs/architecture.md, checked on every import in the package (function-level too).

store <- catalog, faces <- render <- embed <- index <- pipeline, search <- ops <- demo <- cli.
A module may import its own subpackage and anything below; never a sibling of its own level or
anything above (which is also what keeps the subpackages free of import cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

import glassfinder

ROOT = Path(glassfinder.__file__).parent
#: The level of every top-level module and subpackage; 0 is the foundation anyone may use.
LEVEL = {
    "errors": 0,
    "settings": 0,
    "layout": 0,
    "workers": 0,
    "models": 0,
    "store": 0,
    "quarantine": 0,
    "catalog": 1,
    "faces": 1,
    "render": 2,
    "embed": 3,
    "index": 4,
    "pipeline": 5,
    "search": 5,
    "ops": 6,
    "airflow_local": 6,
    "demo": 7,
    "cli": 8,
}


def _imported(tree: ast.AST) -> list[str]:
    """The glassfinder subpackages or modules a module imports, wherever the import stands."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "glassfinder":
            parts = node.module.split(".")
            found += [a.name for a in node.names] if len(parts) == 1 else [parts[1]]
        elif isinstance(node, ast.Import):
            found += [a.name.split(".")[1] for a in node.names if a.name.startswith("glassfinder.")]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        source = rel.parts[0].removesuffix(".py")
        if source == "__init__":
            continue
        assert source in LEVEL, f"{rel}: new subpackage {source!r} has no level in tests/test_layers.py"
        for target in _imported(ast.parse(path.read_text(), str(path))):
            if target == source or target not in LEVEL:
                continue
            if LEVEL[target] >= LEVEL[source] and LEVEL[target] > 0:
                bad.append(f"{rel} imports glassfinder.{target} (level {LEVEL[target]} >= {LEVEL[source]})")
    return bad


def test_no_subpackage_imports_its_own_level_or_above() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from glassfinder.search.query import QueryEngine\n")
    assert _imported(tree) == ["search"]
