"""tasks/core is layered by concern: the plumbing modules (config, io, errors, environment,
paths, cli, tracking, ...) at the bottom, then one package per concern, and no module imports
a package above its own (a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "tasks" / "core"
# Bottom to top: a module may import its own layer and the layers before it.
LAYERS = [
    "plumbing", "pretrained", "data", "validation", "modeling", "evaluation", "registration",
    "reports",
]  # fmt: skip


def layer_of(module: str) -> str:
    """The layer of ``tasks.core[.X[.Y]]``: its package, or plumbing for a flat module."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and (CORE / parts[2]).is_dir() else "plumbing"


def core_imports(path: Path) -> set[str]:
    """Every ``tasks.core`` module ``path`` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tasks.core.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tasks.core"):
            if node.module == "tasks.core":  # from tasks.core import tracking
                found |= {f"tasks.core.{a.name}" for a in node.names}
            else:
                found.add(node.module)
    return found


def upward_imports() -> list[str]:
    wrong = []
    for path in sorted(CORE.rglob("*.py")):
        module = ".".join(path.relative_to(CORE.parents[1]).with_suffix("").parts)
        own = LAYERS.index(layer_of(module.removesuffix(".__init__")))
        for imported in sorted(core_imports(path)):
            if LAYERS.index(layer_of(imported)) > own:
                wrong.append(f"{module} imports {imported}")
    return wrong


def test_every_package_is_a_known_layer():
    packages = {p.name for p in CORE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {"plumbing"}


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check can fail: a plumbing module importing a package is reported."""
    fake = tmp_path / "tasks" / "core"
    (fake / "modeling").mkdir(parents=True)
    (fake / "modeling" / "__init__.py").write_text("")
    (fake / "io.py").write_text("def f():\n    from tasks.core.modeling import training\n")
    monkeypatch.setattr(__import__(__name__), "CORE", fake)
    assert upward_imports() == ["tasks.core.io imports tasks.core.modeling"]
