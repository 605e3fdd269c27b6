"""The report stage: one HTML page built from a real tiny pipeline's outputs (``dvc repro``),
with the numbers the other stages wrote, escaped user text, and a copy in MLflow."""

from __future__ import annotations

import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest
from conftest import commit, make_project, run, set_params, toy_text_frame

from tasks.report import write_report

SCRIPT = "<script>alert('x')</script>"
SECTIONS = ["data", "tuning", "training", "test", "errors", "lineage"]


class Page(HTMLParser):
    """Sections by id, each with its text and its tables (rows of cell texts)."""

    def __init__(self, text: str):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.images: list[str] = []
        self.links: list[str] = []
        self._section = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self._section = {"text": [], "tables": []}
            self.sections[attrs["id"]] = self._section
        elif tag == "table" and self._section is not None:
            self._section["tables"].append([])
        elif tag == "tr" and self._section is not None:
            self._row = []
            self._section["tables"][-1].append(self._row)
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(attrs["src"])
        elif tag in ("a", "link", "script", "iframe"):
            self.links.append(attrs.get("href") or attrs.get("src") or tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._row is not None and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._section is not None:
            self._section["text"].append(data)

    def text(self, section: str) -> str:
        return " ".join(" ".join(self.sections[section]["text"]).split())

    def table(self, section: str, first_header: str) -> list[list[str]]:
        """The rows (header first) of the section's table whose first header is given."""
        for rows in self.sections[section]["tables"]:
            if rows and rows[0][0] == first_header:
                return rows
        raise AssertionError(f"no table starting with {first_header!r} in {section}")


def as_dict(rows: list[list[str]]) -> dict[str, str]:
    return {r[0]: r[1] for r in rows[1:]}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, tiny_model_dir) -> Path:
    """A committed tiny project (every text ends in an HTML script tag) run by ``dvc repro``.

    (Labels cannot hold one: tokenize logs label2id.<label> as MLflow metric names.)"""
    project = make_project(tmp_path_factory.mktemp("report") / "project")
    frame = toy_text_frame(200, seed=3)[["text", "label"]]
    frame["text"] = frame["text"] + " " + SCRIPT
    frame.to_csv(project / "data/external/toy.csv", index=False)
    shutil.copytree(tiny_model_dir, project / "models/pretrained/tiny")
    set_params(
        project,
        **{
            "data.source": {"path": "data/external/toy.csv"},
            "model.name_or_path": "models/pretrained/tiny",
            "tokenize.max_length": 32,
            "train.epochs": 1,
            "train.precision": "fp32",
            "tune.n_trials": 3,
            "tune.timeout": None,
            "tune.space": {
                "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2},
                "weight_decay": {"type": "float", "low": 0.0, "high": 0.1},
            },
            "register.min_score": 0.0,
        },
    )
    commit(project)
    output = run(["dvc", "repro"], project).stdout
    assert "Running stage 'report'" in output
    return project


def test_report_shows_the_stages_numbers_escaped_and_is_in_mlflow(pipeline):
    reports = pipeline / "reports"
    raw = (reports / "report.html").read_text(encoding="utf-8")
    page = Page(raw)
    assert list(page.sections) == SECTIONS
    # Self-contained: no script, no external resource; images are inline PNGs.
    assert "<script" not in raw.lower()
    assert page.links and all(link.startswith("#") for link in page.links)
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)

    summary = json.loads((pipeline / "data/prepared/summary.json").read_text())
    splits = {r[0]: r for r in page.table("data", "split")[1:]}
    assert {s: int(r[1]) for s, r in splits.items()} == {
        s: info["examples"] for s, info in summary["splits"].items()
    }
    assert "Data validation passed" in page.text("data")

    # Tuning: every trial, the pruned count, importances of both searched dimensions.
    with (reports / "tune_trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    assert len(page.table("tuning", "number")) - 1 == len(trials) == 3
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    assert f"(pruned: {pruned})" in page.text("tuning")
    importances = as_dict(page.table("tuning", "parameter"))
    assert set(importances) == {"learning_rate", "weight_decay"}
    assert sum(float(v) for v in importances.values()) == pytest.approx(1.0, abs=2e-3)

    # Training facts and test metrics are the files' numbers.
    train_metrics = json.loads((reports / "train_metrics.json").read_text())
    training = as_dict(page.table("training", "key"))
    assert int(training["global_steps"]) == train_metrics["global_steps"]
    metrics = json.loads((reports / "metrics.json").read_text())
    shown = as_dict(page.table("test", "metric"))
    for key in ("accuracy", "f1_macro", "f1_weighted"):
        assert float(shown[key]) == pytest.approx(metrics[key], rel=1e-3), key
    per_class = {r[0]: r for r in page.table("test", "label")[1:]}
    assert set(per_class) == set(metrics["per_class"])
    for label, scores in metrics["per_class"].items():
        assert int(per_class[label][4]) == scores["support"]
    confusion = page.table("test", "actual \\ predicted")
    assert sum(int(c) for row in confusion[1:] for c in row[1:]) == metrics["samples"]

    # Worst errors: every line of errors.jsonl, in its order; the script tag in the texts is
    # shown as text (escaped in the source). One epoch of a random tiny model makes mistakes.
    errors = [json.loads(line) for line in (reports / "errors.jsonl").read_text().splitlines()]
    rows = page.table("errors", "text")[1:]
    assert errors and [r[0] for r in rows] == [e["text"] for e in errors]
    assert all(r[0].endswith(SCRIPT) for r in rows)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in raw

    # Lineage: the commit, the data hashes of dvc.lock, the registered version.
    registry = json.loads((reports / "registry.json").read_text())
    lineage = as_dict(page.table("lineage", "what"))
    head = run(["git", "rev-parse", "HEAD"], pipeline).stdout.strip()
    assert lineage["git commit"] == head
    assert lineage["DVC hash of data/prepared/test.parquet"] == registry["test_data_hash"]
    assert lineage["registered model"] == registry["model_name"]
    assert int(lineage["version"]) == registry["version"]
    assert "@champion" in lineage["aliases"]

    # In MLflow: an artifact of the execution's parent run, which the last stage ended.
    uri = f"sqlite:///{pipeline / '.state' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(lineage["MLflow pipeline run"])
    assert parent.data.tags["pipeline.stage"] == "pipeline"
    assert parent.info.status == "FINISHED"
    logged = [a.path for a in client.list_artifacts(parent.info.run_id, "report")]
    assert logged == ["report/report.html"]


def test_missing_outputs_become_notes_and_text_is_escaped(tmp_path):
    """Without tuning or training outputs the page still builds; an error's text and label
    from the data are escaped."""
    reports = tmp_path / "reports"
    reports.mkdir()
    error = {"text": "<img src=x onerror=alert(1)> & more", "gold": "<b>", "predicted": "ok"}
    (reports / "errors.jsonl").write_text(json.dumps({**error, "confidence": 0.9}) + "\n")
    out = write_report(tmp_path, reports / "report.html")
    raw = out.read_text()
    page = Page(raw)
    assert list(page.sections) == SECTIONS
    assert "did not run" in page.text("tuning")
    assert "No training outputs" in page.text("training")
    assert "none (register did not run)" in page.text("lineage")
    (row,) = page.table("errors", "text")[1:]
    assert row[:3] == [error["text"], "<b>", "ok"]
    assert "<img src=x" not in raw and "&lt;img src=x onerror=alert(1)&gt; &amp; more" in raw
    assert not page.images


def test_entity_report_has_per_type_scores_and_wrong_words(tmp_path, tiny_model_dir):
    """Token classification: the per-type table and the worst errors' wrong words come from
    evaluate's metrics.json and errors.jsonl (a tiny model trained by the real stages)."""
    from conftest import build_tiny_model

    from tasks.core.evaluation.scoring import evaluate

    params, tokenized, model = build_tiny_model(tmp_path, tiny_model_dir, "token_classification", 1)
    evaluate(params, tokenized, model, tmp_path / "reports")
    page = Page(write_report(tmp_path, tmp_path / "reports" / "report.html").read_text())
    metrics = json.loads((tmp_path / "reports" / "metrics.json").read_text())
    per_type = {r[0]: r for r in page.table("test", "label")[1:]}
    assert set(per_type) == set(metrics["per_type"]) and per_type
    for name, scores in metrics["per_type"].items():
        assert float(per_type[name][3]) == pytest.approx(scores["f1"], abs=5e-4)
    errors = [json.loads(line) for line in (tmp_path / "reports/errors.jsonl").open()]
    rows = page.table("errors", "text")[1:]
    assert errors and len(rows) == len(errors)
    first = errors[0]["wrong_words"][0]
    assert f"{first['word']}: {first['gold']}" in rows[0][1]
    assert f"{first['word']}: {first['predicted']}" in rows[0][2]
