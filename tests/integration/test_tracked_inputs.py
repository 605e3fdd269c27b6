"""Every input tracked: user data only from data/external/, a local start-point model only
from models/pretrained/ (the folders dvc.yaml lists as dependencies), checked by the stages'
CLIs before anything is read; ``dvc import-url`` brings an outside file in, keeping its
origin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project, run, set_params, write_toy_prepared

from tasks.core.config import Params
from tasks.core.tracked_inputs import untracked_inputs

SECRET = "NOT-USER-DATA-7f3a"  # a line of a file outside the project: never echoed
FIX = "dvc import-url"


def params_for(source: dict | None = None, model: str = "default") -> Params:
    data = {"source": source, "text_column": "review", "label_column": "sentiment"}
    raw = {"model": {"name_or_path": model}}
    return Params.model_validate({**raw, "data": data} if source else raw)


@pytest.fixture
def layout(tmp_path) -> tuple[Path, Path]:
    """A project root with its tracked folders, and a folder outside it."""
    root, outside = tmp_path / "project", tmp_path / "outside"
    for folder in (root / "data/external", root / "models/pretrained", outside / "model"):
        folder.mkdir(parents=True)
    (outside / "reviews.csv").write_text(f"review,sentiment\n{SECRET},{SECRET},{SECRET}\n")
    return root, outside


# --- the check (in-process) ------------------------------------------------------------


def test_files_inside_data_external_are_tracked(layout):
    root, _ = layout
    (root / "data/external/sub").mkdir()
    (root / "data/external/sub/r.csv").write_text("review,sentiment\n")
    (root / "data/external/alias.csv").symlink_to(root / "data/external/sub/r.csv")
    for path in ("data/external/sub/r.csv", "data/external/alias.csv", "data/external/new.csv"):
        assert untracked_inputs(params_for({"path": path}), root, base=root) == []
    absolute = {"train": str(root / "data/external/sub/r.csv"), "test": "data/external/x.csv"}
    assert untracked_inputs(params_for(absolute), root, base=root) == []
    assert untracked_inputs(params_for(None), root, base=root) == []  # a built-in


@pytest.mark.parametrize("how", ["absolute", "dotdot", "symlink"])
def test_files_outside_data_external_are_named_with_the_fix(layout, how):
    root, outside = layout
    value = {
        "absolute": str(outside / "reviews.csv"),
        "dotdot": "data/external/../../../outside/reviews.csv",
        "symlink": "data/external/link.csv",
    }[how]
    (root / "data/external/link.csv").symlink_to(outside / "reviews.csv")
    source = {"train": "data/external/ok.csv", "test": value}
    [problem] = untracked_inputs(params_for(source), root, base=root)
    assert problem.startswith(f"data.source.test: {value!r}")
    assert "is outside data/external/" in problem
    real = (outside / "reviews.csv").resolve()
    assert f"cp {real} data/external/reviews.csv" in problem
    assert f"{FIX} {real} data/external/reviews.csv" in problem
    assert "dvc update data/external/reviews.csv.dvc" in problem


def test_a_link_into_the_dvc_cache_is_tracked(layout):
    """``cache.type: symlink`` makes ``dvc import-url`` leave a link into .dvc/cache."""
    root, _ = layout
    cached = root / ".dvc/cache/files/md5/ab/cdef"
    cached.parent.mkdir(parents=True)
    cached.write_text("review,sentiment\n")
    (root / "data/external/imported.csv").symlink_to(cached)
    source = {"path": "data/external/imported.csv"}
    assert untracked_inputs(params_for(source), root, base=root) == []


def test_model_directory_must_be_in_models_pretrained(layout):
    root, outside = layout
    (root / "models/pretrained/tiny").mkdir()
    for spec in ("default", "models:/sentiment@champion", "models/pretrained/tiny"):
        assert untracked_inputs(params_for(model=spec), root, base=root) == []
    for spec in (str(outside / "model"), "../outside/model", "models/pretrained/../../x"):
        [problem] = untracked_inputs(params_for(model=spec), root, base=root)
        assert problem.startswith(f"model.name_or_path: {spec!r}")
        assert "is outside models/pretrained/" in problem and f"{FIX} " in problem
    # A stage checks only what it reads: prepare does not look at the model.
    outside_model = params_for(model=str(outside / "model"))
    assert untracked_inputs(outside_model, root, keys=["data.source"], base=root) == []


# --- the stages' CLIs ------------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("tracked") / "project")


def _stage(project: Path, stage: str, **params) -> subprocess.CompletedProcess:
    set_params(project, **params)
    return run([sys.executable, "-m", f"tasks.{stage}"], project, check=False)


# Every way out (absolute, ../, a link) is covered by the check's own tests above; the CLI
# is run for two of them (each run starts a Python process).
@pytest.mark.parametrize("how", ["absolute", "symlink"])
def test_prepare_refuses_a_file_outside_data_external(project, tmp_path, how):
    secret = tmp_path / "secret.csv"
    secret.write_text(f"review,sentiment\n{SECRET},{SECRET},{SECRET}\n{SECRET}\n")
    link = project / "data/external/link.csv"
    link.unlink(missing_ok=True)
    link.symlink_to(secret)
    value = {
        "absolute": str(secret),
        "dotdot": "../" * len(project.parts) + str(secret).lstrip("/"),
        "symlink": "data/external/link.csv",
    }[how]
    done = _stage(
        project,
        "prepare",
        **{"data.source": {"train": value, "test": value}, "data.format": "csv"},
        **{"data.text_column": "review", "data.label_column": "sentiment"},
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"prepare: error: data.source.train: {value!r}")
    assert f"data.source.test: {value!r}" in done.stderr
    assert f"{FIX} {secret.resolve()} data/external/secret.csv" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_prepare_reads_a_file_inside_data_external(project):
    rows = ["review,sentiment"] + [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    (project / "data/external/reviews.csv").write_text("\n".join(rows) + "\n")
    done = _stage(
        project,
        "prepare",
        **{"data.source": {"path": "data/external/reviews.csv"}, "data.format": "auto"},
        **{"data.text_column": "review", "data.label_column": "sentiment"},
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert summary["inputs"][0]["path"] == "data/external/reviews.csv"
    assert summary["total_examples"] == 60


def test_tokenize_refuses_a_model_outside_models_pretrained(project, tmp_path):
    model = tmp_path / "my-bert"  # refused before anything in it is read
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    write_toy_prepared(project / "data/prepared")
    done = _stage(project, "tokenize", **{"model.name_or_path": str(model)})
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"tokenize: error: model.name_or_path: {str(model)!r} is")
    assert f"{FIX} {model.resolve()} models/pretrained/my-bert" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (project / "data/tokenized").exists()


# --- dvc import-url: an outside file, tracked with its origin ----------------------------


def test_import_url_brings_an_outside_file_in_and_update_re_runs_prepare(tmp_path):
    project = make_project(tmp_path / "project")
    origin = tmp_path / "elsewhere" / "reviews.csv"
    origin.parent.mkdir()
    rows = ["review,sentiment"] + [f"review {i},{'pos' if i % 2 else 'neg'}" for i in range(60)]
    origin.write_text("\n".join(rows) + "\n")
    set_params(
        project,
        **{"data.source": {"path": "data/external/reviews.csv"}, "prepare.max_examples": 5},
        **{"data.text_column": "review", "data.label_column": "sentiment"},
    )
    # data/external is a dependency of prepare; an import into it is a stage before it.
    run(["dvc", "import-url", str(origin), "data/external/reviews.csv"], project)
    assert "Running stage 'prepare'" in run(["dvc", "repro", "prepare"], project).stdout
    first = json.loads((project / "data/prepared/summary.json").read_text())["inputs"]

    origin.write_text(origin.read_text() + "review 60,pos\n")
    # The import is frozen: until `dvc update`, DVC does not look at the origin.
    status = run(["dvc", "status", "prepare"], project)
    assert status.stdout.strip() == "Data and pipelines are up to date."
    run(["dvc", "update", "data/external/reviews.csv.dvc"], project)
    status = run(["dvc", "status", "prepare"], project).stdout
    assert "modified:" in status and "data/external" in status
    assert "Running stage 'prepare'" in run(["dvc", "repro", "prepare"], project).stdout
    again = json.loads((project / "data/prepared/summary.json").read_text())["inputs"]
    assert again[0]["path"] == first[0]["path"] == "data/external/reviews.csv"
    assert again[0]["sha256"] != first[0]["sha256"]  # the new content was read
