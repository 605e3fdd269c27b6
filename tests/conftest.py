"""Shared fixtures. Every test runs the real libraries on small data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def project_env() -> dict[str, str]:
    """Environment for subprocesses: the venv's tools first on PATH, offline, state local."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    return done


def set_params(project: Path, **dotted) -> None:
    """Change ``params.yaml`` of a project copy: ``set_params(p, **{"prepare.seed": 7})``."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in dotted.items():
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh git + DVC repository holding the project's code, params and stage graph."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("tasks", "flows", "data/external"):
        if (ROOT / name).exists():
            shutil.copytree(
                ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__")
            )
    for name in ("params.yaml", "dvc.yaml", "pyproject.toml", ".dvcignore"):
        shutil.copy2(ROOT / name, project / name)
    run(["git", "init", "-q"], project)
    run(["dvc", "init", "-q"], project)
    run(["dvc", "config", "core.analytics", "false"], project)
    return project
