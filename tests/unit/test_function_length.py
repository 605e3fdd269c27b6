"""Short functions, visible coupling (issue 32): no function in tasks/ or flows/ is over 60
lines (``end_lineno - lineno + 1``, docstring included) and no class is defined inside a
function. Measured with ``ast`` on the source files."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60

# Known offenders, "path:qualified.name" each, with the reason; an entry that no longer
# offends fails the test too, so the list only shrinks. Empty: keep it so.
ALLOWED: set[str] = set()


def _functions(tree: ast.AST, prefix: str = "", inside: bool = False):
    """(qualified name, node, whether it lies inside a function) of every def and class."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            yield name, node, inside
            is_function = not isinstance(node, ast.ClassDef)
            yield from _functions(node, f"{name}.", inside or is_function)
        else:
            yield from _functions(node, prefix, inside)


def offenders(root: Path = ROOT) -> dict[str, str]:
    """``path:name`` -> what is wrong, for every function too long or class inside a
    function under ``root``'s tasks/ and flows/."""
    found = {}
    for path in sorted([*root.glob("tasks/**/*.py"), *root.glob("flows/**/*.py")]):
        tree = ast.parse(path.read_text(), filename=str(path))
        where = path.relative_to(root).as_posix()
        for name, node, inside in _functions(tree):
            if isinstance(node, ast.ClassDef):
                if inside:
                    why = f"class defined inside a function (line {node.lineno})"
                    found[f"{where}:{name}"] = why
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_LINES:
                found[f"{where}:{name}"] = f"{lines} lines (line {node.lineno})"
    return found


def test_no_long_functions_or_classes_inside_functions():
    found = offenders()
    new = {key: why for key, why in found.items() if key not in ALLOWED}
    assert not new, "over 60 lines or a class inside a function:\n" + "\n".join(
        f"  {key}: {why}" for key, why in sorted(new.items())
    )
    fixed = sorted(ALLOWED - set(found))
    assert not fixed, f"no longer offending, remove from ALLOWED: {fixed}"


def test_the_check_sees_offenders(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "flows").mkdir()
    (tmp_path / "tasks" / "long.py").write_text(f"def long():\n{body}\n")
    (tmp_path / "flows" / "nested.py").write_text(
        "def factory():\n    class Inner:\n        pass\n    return Inner\n"
        "class Fine:\n    def method(self):\n        return 1\n"
    )
    assert offenders(tmp_path) == {
        "tasks/long.py:long": f"{MAX_LINES + 1} lines (line 1)",
        "flows/nested.py:factory.Inner": "class defined inside a function (line 2)",
    }
