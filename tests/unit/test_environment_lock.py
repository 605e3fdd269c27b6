"""requirements.lock covers the whole environment: every third-party import of the code, every
requirement of pyproject.toml, each pinned with a hash, and the running venv matches it.

Regenerate the lock with ``make lock`` (the upgrade command); ``make setup`` installs it.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
import tomllib
from importlib.metadata import distributions, packages_distributions
from pathlib import Path

from conftest import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

LOCK = ROOT / "requirements.lock"
CODE_DIRS = ("tasks", "flows", "bench", "tests")  # the project's own top-level packages
COMMENT = re.compile(r"(^|\s+)#.*$")
PINNED = re.compile(
    r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(\s+--hash=sha256:[0-9a-f]{64})+"
)


def lock_lines(text: str) -> list[str]:
    """The requirement lines of a requirements file (continuations joined, comments dropped
    as pip drops them: ``#`` at the start or after whitespace)."""
    lines = (COMMENT.sub("", line).strip() for line in text.replace("\\\n", " ").splitlines())
    return [line for line in lines if line]


def malformed(text: str) -> list[str]:
    """Lines that are not ``name==version --hash=sha256:...``."""
    return [line for line in lock_lines(text) if not PINNED.fullmatch(line)]


def locked(text: str) -> dict[str, str]:
    """Locked versions by PEP 503 name."""
    matches = (PINNED.fullmatch(line) for line in lock_lines(text))
    return {canonicalize_name(m["name"]): m["version"] for m in matches if m}


def imported_modules(roots: list[Path]) -> dict[str, set[str]]:
    """Top-level names of the third-party modules imported anywhere in ``roots``' .py files,
    with the files that import each: stdlib, relative imports, the project's packages and
    its own modules (``conftest``, ``bench/results``, from any code folder) left out."""
    found: dict[str, set[str]] = {}
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for top in {name.partition(".")[0] for name in names}:
                    sibling = path.parent / top
                    if (
                        top in sys.stdlib_module_names
                        or top in CODE_DIRS
                        or sibling.with_suffix(".py").is_file()
                        or sibling.is_dir()
                        or any((ROOT / d / f"{top}.py").is_file() for d in CODE_DIRS)
                    ):
                        continue
                    found.setdefault(top, set()).add(str(path.relative_to(root.parent)))
    return found


@functools.cache
def module_owners() -> dict[str, list[str]]:
    """Installed distributions by the top-level module names they provide (slow: cached)."""
    return packages_distributions()


def unlocked_imports(roots: list[Path], lock: dict[str, str]) -> list[str]:
    """One message per imported module whose distribution(s) the lock does not pin."""
    owners = module_owners()
    problems = []
    for module, files in sorted(imported_modules(roots).items()):
        where = ", ".join(sorted(files))
        dists = {canonicalize_name(d) for d in owners.get(module, [])}
        if not dists:
            problems.append(f"{module} (imported in {where}): no installed distribution has it")
        elif missing := sorted(dists - lock.keys()):
            problems.append(f"{module} (imported in {where}): {', '.join(missing)} not locked")
    return problems


def drifted(lock: dict[str, str]) -> list[str]:
    """Locked distributions that the running environment lacks or has in another version."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in distributions()}
    problems = []
    for name, version in sorted(lock.items()):
        have = installed.get(name)
        if have is None or Version(have) != Version(version):
            problems.append(f"{name}: locked {version}, installed {have or 'nothing'}")
    return problems


def unsatisfied(pyproject: dict, lock: dict[str, str]) -> list[str]:
    """pyproject.toml requirements (dependencies, extras, build system) the lock misses."""
    project = pyproject["project"]
    specs = [*project["dependencies"], *pyproject["build-system"]["requires"]]
    specs += [spec for extra in project.get("optional-dependencies", {}).values() for spec in extra]
    problems = []
    for spec in specs:
        req = Requirement(spec)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = lock.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            problems.append(f"{spec}: locked {version or 'nothing'}")
    return problems


def test_every_third_party_import_is_locked():
    problems = unlocked_imports([ROOT / d for d in CODE_DIRS], locked(LOCK.read_text()))
    assert not problems, "add to pyproject.toml, then `make lock`:\n" + "\n".join(problems)


def test_every_lock_line_is_pinned_with_a_hash():
    text = LOCK.read_text()
    problems = malformed(text)
    assert not problems, "not name==version --hash=sha256:...:\n" + "\n".join(problems)
    assert {"pip", "setuptools", "torch"} <= locked(text).keys()
    assert "finetune-flow" not in locked(text), "the project itself is installed from source"


def test_installed_versions_match_the_lock():
    problems = drifted(locked(LOCK.read_text()))
    fix = "rm .venv/.installed && make setup"
    assert not problems, f"the venv differs from the lock, run `{fix}`:\n" + "\n".join(problems)


def test_lock_satisfies_pyproject():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    problems = unsatisfied(pyproject, locked(LOCK.read_text()))
    assert not problems, "pyproject.toml changed, run `make lock`:\n" + "\n".join(problems)


def test_each_check_can_fail(tmp_path):
    """The checks above on inputs that must fail: an unlocked and an unknown import, a line
    without a hash, a version the venv does not have, a range the lock does not meet."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "x.py").write_text("import yaml\nimport no_such_module_anywhere\n")
    problems = unlocked_imports([tmp_path / "tasks"], {"pytest": "9"})
    assert [p.split(" ")[0] for p in problems] == ["no_such_module_anywhere", "yaml"]
    assert "tasks/x.py" in problems[1] and "pyyaml not locked" in problems[1]
    lock = "# c\na==1 --hash=sha256:" + "0" * 64 + " # sdist\nb==2\nc>=1 --hash=sha256:x\n"
    assert locked(lock) == {"a": "1"}
    assert malformed(lock) == ["b==2", "c>=1 --hash=sha256:x"]
    missing, old = drifted({"pytest": "0.0.1", "no-such-dist": "1"})
    assert missing == "no-such-dist: locked 1, installed nothing"
    assert old.startswith("pytest: locked 0.0.1, installed ") and not old.endswith("nothing")
    pyproject = {
        "project": {"dependencies": ["torch==2.13.0"], "optional-dependencies": {"d": ["ruff>=9"]}},
        "build-system": {"requires": ["setuptools>=68"]},
    }
    assert unsatisfied(pyproject, {"torch": "2.13.0+cpu", "ruff": "0.6"}) == [
        "setuptools>=68: locked nothing",
        "ruff>=9: locked 0.6",
    ]
