"""Every import inside a function says why it is not at the top of its module.

A function-level ("lazy") import hides a dependency from whoever reads the top of the module, and
from the import-time checks. Sometimes that is the point: a heavy optional dependency (torch, cv2,
pyrender, airflow ...) kept off a path that must stay light, an import cycle, or a module that must
not load in some process. Each such import carries a `#` comment, on its own line or on the line
directly above it (or above the first import of a run of consecutive imports), saying which.
Everything else belongs at the top of the module. `if TYPE_CHECKING:` imports are not lazy.
"""

from __future__ import annotations

import ast
from pathlib import Path

import glassfinder

ROOT = Path(glassfinder.__file__).parent
#: Links to the top-level dags/ and plugins/ folders, not part of the package's own code.
SKIP = {"dags", "plugins"}


def _lazy_imports(tree: ast.AST) -> list[list[ast.stmt]]:
    """The imports nested in a function, grouped into runs of consecutive import statements."""
    runs: list[list[ast.stmt]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for field in ("body", "orelse", "finalbody", "handlers"):
            run: list[ast.stmt] = []
            for child in getattr(node, field, []):
                if in_function and isinstance(child, ast.Import | ast.ImportFrom):
                    run.append(child)
                    continue
                if run:
                    runs.append(run)
                    run = []
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, inside)
            if run:
                runs.append(run)

    visit(tree, False)
    return runs


def unexplained_lazy_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP:
            continue
        lines = path.read_text().splitlines()
        for run in _lazy_imports(ast.parse("\n".join(lines), str(path))):
            above_run = lines[run[0].lineno - 2]
            for node in run:
                own, above = lines[node.lineno - 1], lines[node.lineno - 2]
                if "#" not in own and "#" not in above and "#" not in above_run:
                    bad.append(f"glassfinder/{rel}:{node.lineno}: {own.strip()}")
    return bad


def test_every_lazy_import_says_why() -> None:
    bad = unexplained_lazy_imports()
    assert bad == [], "lazy imports with no comment saying why:\n" + "\n".join(bad)
