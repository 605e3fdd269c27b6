"""The installed distribution holds every package of the source tree: a sub-package missing
from pyproject's ``packages`` list imports from a checkout but not from a built wheel."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("tasks", "flows")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found == listed
