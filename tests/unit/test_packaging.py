"""The installed distribution holds every package of the source tree: a sub-package missing
from pyproject's ``packages`` list imports from a checkout but not from a built wheel. A folder
of data files (the behaviour cases) counts too: setuptools treats every folder as a package."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(folder.relative_to(ROOT).parts)
        for top in ("tasks", "flows")
        for folder in [ROOT / top, *(ROOT / top).rglob("*")]
        if folder.is_dir() and folder.name != "__pycache__"
    }
    assert found == listed
