"""The layer rule of docs/architecture.md, checked on every import in the package (function-level too).

store <- catalog, nets <- face <- heads <- render <- embed <- face.training <- index <- pipeline,
search <- ops <- demo <- cli. `face` is face analysis at run time; `face.training` (a level of its
own, above embed: it trains on embed's augmentations and catalogue) is what only training imports.
A module may import its own subpackage and anything below; never a sibling of its own level or
anything above (which is also what keeps the subpackages free of import cycles).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
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
    "lru": 0,
    "catalog": 1,
    "nets": 1,
    "face": 2,
    "heads": 3,
    "render": 4,
    "embed": 5,
    "face.training": 6,
    "index": 7,
    "pipeline": 8,
    "search": 8,
    "ops": 9,
    "airflow_local": 9,
    "demo": 10,
    "cli": 11,
}


def _unit(dotted: list[str]) -> str:
    """The layer a module path (parts after 'glassfinder') belongs to: its most specific entry."""
    two = ".".join(dotted[:2])
    return two if two in LEVEL else dotted[0]


def _imported(tree: ast.AST) -> list[str]:
    """The glassfinder subpackages or modules a module imports, wherever the import stands."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "glassfinder":
            parts = node.module.split(".")
            found += [a.name for a in node.names] if len(parts) == 1 else [_unit(parts[1:])]
        elif isinstance(node, ast.Import):
            found += [_unit(a.name.split(".")[1:]) for a in node.names if a.name.startswith("glassfinder.")]
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        source = _unit([p.removesuffix(".py") for p in rel.parts])
        if source == "__init__":
            continue
        assert source in LEVEL, f"{rel}: new subpackage {source!r} has no level in tests/test_layers.py"
        for target in _imported(ast.parse(path.read_text(), str(path))):
            if target == source or target not in LEVEL or source.startswith(target + "."):
                continue
            if LEVEL[target] >= LEVEL[source] and LEVEL[target] > 0:
                bad.append(f"{rel} imports glassfinder.{target} (level {LEVEL[target]} >= {LEVEL[source]})")
    return bad


def test_no_subpackage_imports_its_own_level_or_above() -> None:
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    tree = ast.parse("def f():\n    from glassfinder.search.query import QueryEngine\n")
    assert _imported(tree) == ["search"]


def test_only_settings_touches_the_environment() -> None:
    """Every variable GlassFinder reads is named, with what it sets, in settings.ENV_VARS and
    read there: a module reading os.environ directly would hide a knob from operators."""
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted(ROOT.rglob("*.py"))
        if path.name != "settings.py" and ("os.environ" in path.read_text() or "getenv(" in path.read_text())
    ]
    assert offenders == []


def test_every_named_variable_is_documented_and_unknown_ones_fail() -> None:
    import pytest

    from glassfinder import settings

    names = [v for k, v in vars(settings).items() if k.endswith("_ENV") and isinstance(v, str)]
    assert names and all(settings.ENV_VARS.get(n) for n in names)
    with pytest.raises(KeyError, match="ENV_VARS"):
        settings.env("GLASSFINDER_NO_SUCH_KNOB")
    assert settings.env(settings.STORE_URI_ENV, {settings.STORE_URI_ENV: "s3://b/p"}) == "s3://b/p"


def test_the_search_service_imports_neither_the_renderer_nor_training_code() -> None:
    """The service answers shoppers: it needs face analysis at run time (glassfinder.face), never
    pyrender/OpenGL (a GL context per worker, seconds of import) or any training module."""
    import subprocess
    import sys

    code = (
        "import sys, glassfinder.search.service, glassfinder.search.query\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.split()
    assert "glassfinder.face.net" in loaded and "glassfinder.face.detect" in loaded  # the check sees them
    forbidden = ("pyrender", "OpenGL", "glassfinder.face.training", "glassfinder.embed.train")
    assert [m for m in loaded if m.startswith(forbidden)] == []


def test_every_error_class_lives_in_errors_and_in_the_architecture_table() -> None:
    """One error family: a class defined elsewhere would say what to do in a place nobody looks."""
    import inspect

    from glassfinder import errors

    elsewhere = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "errors.py" and path.parent == ROOT:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            # A private class (_Stop, _CallAbandoned) is a control-flow signal that never leaves its module.
            if (
                isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")
                and any(
                    getattr(b, "id", getattr(b, "attr", "")).endswith(("Error", "Exception"))
                    for b in node.bases
                )
            ):
                elsewhere.append(f"{path.relative_to(ROOT)}: {node.name}")
    assert elsewhere == []
    doc = (ROOT.parent / "docs" / "architecture.md").read_text()
    classes = [
        name
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == errors.__name__
    ]
    assert [c for c in classes if f"| `{c}` |" not in doc] == []


def _names_the_base(node: ast.expr | None) -> bool:
    """`GlassFinderError`, `errors.GlassFinderError`, or a call of either."""
    if isinstance(node, ast.Call):
        node = node.func
    return getattr(node, "id", getattr(node, "attr", None)) == "GlassFinderError"


def _offences(names: Callable[[ast.expr | None], bool], *, calls: bool) -> list[str]:
    """Where a module under glassfinder/ raises what `names` matches, defaults a parameter to it,
    and (calls=True) builds one."""
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Raise) and names(node.exc):
                found.append(f"{where}: raise")
            elif calls and isinstance(node, ast.Call) and names(node.func):
                found.append(f"{where}: call")
            elif isinstance(node, ast.arguments):
                found += [
                    f"{path.relative_to(ROOT)}:{d.lineno}: default"
                    for d in [*node.defaults, *node.kw_defaults]
                    if d is not None and names(d)
                ]
    return found


def test_nothing_raises_the_bare_base_error() -> None:
    """docs/architecture.md: every raise names a class whose type says retry, quarantine, refuse,
    not found or fail; the bare base says none of them. A parameter defaulting to the base (the
    class a helper raises unless told otherwise) counts as a raise of it."""
    assert _offences(_names_the_base, calls=False) == []


def _names_a_category(node: ast.expr | None) -> bool:
    """`StoreError` or `IndexStoreError` (bare or as `errors.X`), or a call of either."""
    if isinstance(node, ast.Call):
        node = node.func
    return getattr(node, "id", getattr(node, "attr", None)) in ("StoreError", "IndexStoreError")


def test_nothing_raises_or_makes_a_bare_category_error() -> None:
    """docs/architecture.md: StoreError and IndexStoreError say where it failed, not what to do;
    every raise names a subclass whose other base is the verdict. Building one (`exc =
    StoreError(...)`, `return StoreError(...)`) counts, and so does a parameter defaulting to one;
    `except StoreError`, isinstance checks and annotations do not."""
    assert _offences(_names_a_category, calls=True) == []


def test_every_error_class_has_exactly_one_verdict() -> None:
    """Each class says one thing to do: it descends from exactly one verdict. The categories say
    where it failed (their subclasses pick a verdict as their other base); the base says nothing."""
    import inspect

    from glassfinder import errors

    verdicts = (
        errors.RetryableError,
        errors.BadInputError,
        errors.BadAssetError,
        errors.NotFoundError,
        errors.FaultError,
    )
    categories = (errors.StoreError, errors.IndexStoreError)
    wrong = {}
    for name, cls in vars(errors).items():
        if not (inspect.isclass(cls) and issubclass(cls, Exception) and cls.__module__ == errors.__name__):
            continue
        has = [v.__name__ for v in verdicts if issubclass(cls, v)]
        expected = 0 if cls in (errors.GlassFinderError, *categories) else 1
        if len(has) != expected:
            wrong[name] = has
    assert wrong == {}
    assert all(issubclass(c, errors.GlassFinderError) for c in verdicts)


def test_store_keys_are_built_only_in_layout() -> None:
    """docs/architecture.md: object keys live in layout.py. A key spelt anywhere else would drift
    from the layout the next time it changes (a reader looking where no writer writes)."""
    tree = ast.parse((ROOT / "layout.py").read_text())
    inner = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values[1:]}
    prefixes = {
        node.value.split("/")[0] + "/"
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in inner  # a key's first segment, not a segment after a placeholder
        and re_key(node.value)
    }
    assert {"renders/", "features/", "indexes/", "catalog/", "models/", "runs/", "faces/"} <= prefixes
    spelt = []
    for path in sorted(ROOT.rglob("*.py")):
        if path == ROOT / "layout.py" or {"dags", "plugins"} & set(path.relative_to(ROOT).parts):
            continue
        tree = ast.parse(path.read_text(), str(path))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docstrings
                and node.value.startswith(tuple(prefixes))
            ):
                spelt.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert spelt == []


def re_key(text: str) -> bool:
    """A store key's first segment: lowercase letters and '_' then '/'."""
    import re

    return re.match(r"^[a-z_]+/", text) is not None
