"""The benchmark presets (presets/*.yaml) run end to end on slices of ../shared/datasets.

Skipped only when ../shared/datasets is absent. Each test copies the project, writes the
first sentences of each benchmark file into ``<tmp>/shared/datasets`` (so the presets'
relative ``../shared/...`` paths resolve there), applies the preset with its CLI, shrinks
the budget (tiny tune, one epoch) and runs ``dvc repro``: every stage, registry included.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, make_project, run, set_params

SHARED = ROOT.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
FAST = {
    "tune.n_trials": 2,
    "tune.timeout": None,
    "tune.space": {
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-4, "log": True},
        "epochs": {"type": "int", "low": 1, "high": 1},
    },
    "train.epochs": 1,
    "register.min_score": 0.0,  # a one-epoch model on a slice still becomes the champion
}


def conll_head(source: Path, target: Path, sentences: int) -> None:
    """The first ``sentences`` sentences of a CoNLL file, -DOCSTART- lines included."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")
    kept = [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")][:sentences]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(kept) + "\n", encoding="utf-8")


def tsv_head(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows of a TSV file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open(encoding="utf-8") as handle:
        target.write_text("".join(itertools.islice(handle, rows + 1)), encoding="utf-8")


def apply_preset(tmp_path: Path, name: str) -> Path:
    project = make_project(tmp_path / "project")
    done = run([sys.executable, "-m", "tasks.presets", name], project)
    assert f"preset {name}" in done.stdout
    return project


@pytest.mark.slow
@needs_shared
def test_conll2003_preset_runs_end_to_end(tmp_path):
    shared = tmp_path / "shared" / "datasets" / "conll2003"
    for split, count in (("train", 300), ("dev", 80), ("test", 80)):
        conll_head(SHARED / "conll2003" / f"{split}.txt", shared / f"{split}.txt", count)
    project = apply_preset(tmp_path, "conll2003")
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert params["task"] == "token_classification" and params["data"]["format"] == "conll"
    set_params(project, **FAST)

    run(["dvc", "repro"], project)
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert [summary["splits"][s]["examples"] for s in ("train", "validation", "test")] == [
        300,
        80,
        80,
    ]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["samples"] == 80 and 0 <= metrics["f1_micro"] <= 1
    assert {"PER", "LOC", "ORG", "MISC"} <= set(metrics["per_type"])
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["model_name"] == "conll2003-ner"
    best = json.loads((project / "reports/best_params.json").read_text())
    assert best["status"] == "tuned"


@pytest.mark.slow
@needs_shared
def test_sst2_preset_holds_validation_out_of_train_and_tests_on_dev(tmp_path):
    shared = tmp_path / "shared" / "datasets" / "sst2"
    tsv_head(SHARED / "sst2" / "train.tsv", shared / "train.tsv", 600)
    tsv_head(SHARED / "sst2" / "dev.tsv", shared / "dev.tsv", 100)
    project = apply_preset(tmp_path, "sst2")
    set_params(project, **FAST)

    run(["dvc", "repro"], project)
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    train, validation = (summary["splits"][s]["examples"] for s in ("train", "validation"))
    assert train + validation <= 600 and 0.03 < validation / (train + validation) < 0.08
    assert summary["splits"]["test"]["examples"] == 100
    assert "held out from the train file" in summary["validation_origin"]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["samples"] == 100 and set(metrics["per_class"]) == {"0", "1"}
    report = (project / "reports/eval_report.md").read_text()
    assert "shared/datasets/sst2/dev.tsv" in report
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["model_name"] == "sst2-sentiment"


def test_a_bad_preset_changes_nothing(tmp_path):
    project = make_project(tmp_path / "project")
    before = (project / "params.yaml").read_bytes()
    unknown = run([sys.executable, "-m", "tasks.presets", "nope"], project, check=False)
    assert unknown.returncode == 1 and "unknown preset 'nope'" in unknown.stderr
    assert "conll2003" in unknown.stderr and "sst2" in unknown.stderr
    (project / "presets" / "broken.yaml").write_text("train.learning_rate: -1\n")
    broken = run([sys.executable, "-m", "tasks.presets", "broken"], project, check=False)
    assert broken.returncode == 1 and "train.learning_rate" in broken.stderr
    assert (project / "params.yaml").read_bytes() == before
