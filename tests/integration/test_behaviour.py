"""Behavioural checks and slice metrics of the evaluate stage: the check logic on tiny
models trained on toy data (cases written so that some must pass and some must fail), the
gate, and the shipped cases on the real encoder after a short fine-tuning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params, write_toy_prepared

from tasks.core.config import BehaviourParams
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.evaluation.behaviour import cases_file, check_model, gate, load_cases, run_checks
from tasks.core.evaluation.scoring import evaluate
from tasks.core.modeling.precision import choose_precision
from tasks.core.pretrained.model import load_model
from tasks.train import train


def build(directory: Path, model_dir: Path, task: str, **sections):
    """Tokenize toy data and train a tiny model: (params, tokenized dir, model dir)."""
    params = tiny_params(task, model_dir, train={"epochs": 3}, **sections)
    prepared = write_toy_prepared(directory / "prepared", task)
    tokenized = directory / "tokenized"
    tokenize(params, prepared, tokenized, directory / "tokenize.json", directory)
    train(params, tokenized, directory / "model", directory / "train", directory)
    return params, tokenized, directory / "model"


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_model_dir):
    return build(tmp_path_factory.mktemp("text"), tiny_model_dir, "text_classification")


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, tiny_model_dir):
    return build(tmp_path_factory.mktemp("token"), tiny_model_dir, "token_classification")


def write_cases(path: Path, checks: dict) -> Path:
    path.write_text(yaml.safe_dump(checks), encoding="utf-8")
    return path


# The toy reviews carry their label in one cue word (good, great... / bad, awful...).
TEXT_CASES = {
    "mft": {
        "description": "obvious",
        "cases": [
            {"text": "the movie was great .", "expected": "positive"},
            {"text": "a very excellent film", "expected": "positive"},
            {"text": "the plot was awful", "expected": "negative"},
            {"text": "the plot was terrible", "expected": "positive"},  # must fail
        ],
    },
    "inv": {
        "fills": {"name": ["alice", "bob", "carol"], "word": ["great", "awful", "lovely"]},
        "cases": ["{name} saw a great great excellent film", "the {word} movie"],  # 2nd fails
    },
    "dir": {
        "cases": [
            # The cue swapped (the toy model's one signal): the first two must pass, the third
            # asks for the wrong direction and must fail. (Added cue words beside the first
            # are not a signal this model is bound to use: it may ignore them.)
            {"text": "a great movie", "changed": "a awful movie", "direction": "down"},
            {"text": "a bad movie", "changed": "a good movie", "direction": "up"},
            {"text": "a dull movie", "changed": "a superb movie", "direction": "down"},
        ],
    },
}


def test_text_checks_count_passes_and_list_failures(tmp_path, text_model):
    _, _, model_dir = text_model
    model, tokenizer = load_model(model_dir, "text_classification")
    path = write_cases(tmp_path / "cases.yaml", TEXT_CASES)
    report = run_checks(
        model, tokenizer, "text_classification", BehaviourParams(), choose_precision("fp32"), path
    )
    mft, inv, direction = (report["checks"][name] for name in ("mft", "inv", "dir"))
    assert (mft["count"], mft["passed"], mft["pass_rate"]) == (4, 3, 0.75)
    assert [f["text"] for f in mft["failures"]] == ["the plot was terrible"]
    assert mft["failures"][0]["predicted"] == "negative"
    assert (inv["count"], inv["passed"]) == (2, 1)
    assert inv["failures"][0]["template"] == "the {word} movie"
    assert inv["failures"][0]["the awful movie"] == "negative"
    assert (direction["count"], direction["passed"]) == (3, 2)
    failed = direction["failures"][0]
    assert failed["changed"] == "a superb movie"
    assert failed["positive_after"] > failed["positive_before"]
    assert report["pass_rate"] == pytest.approx(6 / 9, abs=1e-6)
    assert report["skipped"] == {}


def test_gate_names_the_key_and_the_low_checks(tmp_path, text_model):
    _, _, model_dir = text_model
    model, tokenizer = load_model(model_dir, "text_classification")
    path = write_cases(tmp_path / "cases.yaml", TEXT_CASES)
    report = run_checks(
        model, tokenizer, "text_classification", BehaviourParams(), choose_precision("fp32"), path
    )
    gate(report, None)  # report only
    gate(report, 0.5)  # every check passes at least half its cases
    with pytest.raises(StageError, match=r"evaluate.behaviour.min_pass_rate \(0.8\): mft 0.750"):
        gate(report, 0.8)

    # Through the stage's function: the report is written before the gate fails.
    strict = tiny_params(
        "text_classification", model_dir, evaluate={"behaviour": {"min_pass_rate": 0.9}}
    )
    with pytest.raises(StageError, match=r"evaluate\.behaviour\.min_pass_rate"):
        check_model(strict, model_dir, tmp_path / "reports", path)
    written = json.loads((tmp_path / "reports/behaviour.json").read_text())
    assert written["checks"]["mft"]["pass_rate"] == 0.75


def test_labels_that_are_no_sentiment_pair_skip_the_checks_with_the_reason(text_model):
    _, _, model_dir = text_model
    model, tokenizer = load_model(model_dir, "text_classification")
    settings = BehaviourParams(sentiment_labels={"positive": "positive"})  # negative unmapped
    report = run_checks(model, tokenizer, "text_classification", settings, choose_precision("fp32"))
    assert report["checks"] == {} and report["pass_rate"] is None
    assert set(report["skipped"]) == {"mft", "inv", "dir"}
    assert "evaluate.behaviour.sentiment_labels" in report["skipped"]["mft"]
    # SST-2 style labels, mapped: the checks run.
    assert BehaviourParams.model_validate(
        {"sentiment_labels": {1: "positive", 0: "negative"}}
    ).sentiment_labels == {"1": "positive", "0": "negative"}


def test_token_checks_find_entities_and_compare_fillings(tmp_path, token_model):
    _, _, model_dir = token_model
    model, tokenizer = load_model(model_dir, "token_classification")
    cases = {
        "mft": {
            "cases": [
                {"text": "alice smith was in paris", "entities": [["alice smith", "PER"],
                                                                  ["paris", "LOC"]]},
                {"text": "bob met carol in rome", "entities": [["bob", "PER"], ["rome", "LOC"]]},
                {"text": "dave was in oslo", "entities": [["oslo", "PER"]]},  # must fail
                {"text": "erin works at acme", "entities": [["acme", "ORG"]]},  # no ORG: skipped
            ]
        },
        "inv": {
            "fills": {"name": ["alice", "bob smith", "frank"], "thing": ["paris", "the", "bob"]},
            "cases": ["{name} was in berlin", "a {thing} movie"],  # the 2nd must fail
        },
    }  # fmt: skip
    path = write_cases(tmp_path / "cases.yaml", cases)
    report = run_checks(
        model, tokenizer, "token_classification", BehaviourParams(), choose_precision("fp32"), path
    )
    mft, inv = report["checks"]["mft"], report["checks"]["inv"]
    assert (mft["count"], mft["passed"]) == (3, 2)
    assert mft["failures"][0]["text"] == "dave was in oslo"
    assert ["oslo", "LOC"] in mft["failures"][0]["found"]
    assert "ORG" in report["skipped"]["mft"] and "entity_types" in report["skipped"]["mft"]
    assert (inv["count"], inv["passed"]) == (2, 1)
    assert inv["failures"][0]["template"] == "a {thing} movie"
    # Mapped onto a type the model has, the ORG case runs (and fails: acme is no entity).
    mapped = BehaviourParams(entity_types={"ORG": "LOC"})
    again = run_checks(
        model, tokenizer, "token_classification", mapped, choose_precision("fp32"), path
    )
    assert again["checks"]["mft"]["count"] == 4 and "mft" not in again["skipped"]


def test_bad_cases_files_name_the_file_check_and_case(tmp_path):
    bad = write_cases(tmp_path / "bad.yaml", {"mft": {"cases": [{"text": "x", "expected": "ok"}]}})
    with pytest.raises(StageError, match=r"bad.yaml: mft case 1: 'expected' must be positive"):
        load_cases(bad, "text_classification")
    bad = write_cases(tmp_path / "bad.yaml", {"inv": {"fills": {}, "cases": ["{name} is here"]}})
    with pytest.raises(StageError, match=r"inv case 1: .*missing: \['name'\]"):
        load_cases(bad, "text_classification")
    bad = write_cases(tmp_path / "bad.yaml", {"dir": {"cases": [{"text": "a b"}]}})
    with pytest.raises(StageError, match="checks must be among"):
        load_cases(bad, "token_classification")
    for task in ("text_classification", "token_classification"):  # the shipped ones load
        assert set(load_cases(cases_file(task), task)) >= {"mft", "inv"}


def test_slices_and_the_behaviour_section_of_the_report(tmp_path, text_model, token_model):
    params, tokenized, model_dir = text_model
    metrics = evaluate(params, tokenized, model_dir, tmp_path)
    slices = json.loads((tmp_path / "slices.json").read_text())
    parts = slices["slices"]
    assert parts["short"]["count"] + parts["long"]["count"] == metrics["samples"]
    assert parts["negation"]["count"] + parts["no_negation"]["count"] == metrics["samples"]
    assert parts["negation"]["count"] == 0  # the toy reviews never negate
    assert parts["short"]["accuracy"] >= 0.8
    right = parts["short"]["accuracy"] * parts["short"]["count"]
    right += parts["long"]["accuracy"] * parts["long"]["count"]
    assert right == pytest.approx(metrics["accuracy"] * metrics["samples"])
    report = check_model(params, model_dir, tmp_path)  # the shipped cases
    assert set(report["checks"]) == {"mft", "inv", "dir"}
    markdown = (tmp_path / "eval_report.md").read_text()
    assert "## Slices" in markdown and "## Behavioural checks" in markdown
    assert "| mft |" in markdown

    params, tokenized, model_dir = token_model
    metrics = evaluate(params, tokenized, model_dir, tmp_path / "token")
    parts = json.loads((tmp_path / "token/slices.json").read_text())["slices"]
    assert {"type_PER", "type_LOC", "short", "long"} <= set(parts)
    assert parts["type_PER"]["f1_micro"] == metrics["per_type"]["PER"]["f1"]

    disabled = tiny_params(task="text_classification", model=model_dir,
                           evaluate={"behaviour": {"enabled": False}})  # fmt: skip
    assert check_model(disabled, model_dir, tmp_path) is None
    assert json.loads((tmp_path / "behaviour.json").read_text())["enabled"] is False


def test_real_encoder_passes_the_shipped_checks_well_above_chance(tmp_path):
    """The default encoder (all-MiniLM-L6-v2), briefly fine-tuned on a rotten tomatoes sample,
    through the stage's own run (MLflow included)."""
    import mlflow

    from tasks.core.config import Params
    from tasks.evaluate import run_stage
    from tasks.prepare import prepare

    params = Params.model_validate(
        {
            # Measured on 2 busy cores: ~90 s of training; MFT 1.0, INV 0.875, DIR 0.8.
            "prepare": {"max_examples": 800},
            "tokenize": {"max_length": 64},
            "train": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "precision": "fp32"},
            "tune": {"enabled": False},
            "tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}"},
        }
    )
    prepare(params, tmp_path / "prepared", tmp_path / "raw")  # wheel: .state/downloads
    tokenize(params, tmp_path / "prepared", tmp_path / "tokenized", tmp_path / "t.json", tmp_path)
    train(params, tmp_path / "tokenized", tmp_path / "model", tmp_path / "train", tmp_path)
    run_stage(params, tmp_path / "tokenized", tmp_path / "model", tmp_path / "reports", tmp_path)

    # The packaged encoder through the model stages learns the task (moved here from
    # test_evaluate's dvc repro test, which runs the chain on the tiny encoder).
    manifest = json.loads((tmp_path / "tokenized/manifest.json").read_text())
    assert manifest["tokenizer"]["name_or_path"] == "default"
    trained = json.loads((tmp_path / "train/train_metrics.json").read_text())
    assert trained["epochs_run"] == 1 and trained["head"] == "new"
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics["samples"] == 800
    assert metrics["accuracy"] > 0.6 and 0 <= metrics["roc_auc"] <= 1
    report = json.loads((tmp_path / "reports/behaviour.json").read_text())
    checks = report["checks"]
    assert checks["mft"]["pass_rate"] >= 0.75  # chance: 0.5
    assert checks["inv"]["pass_rate"] >= 0.6
    assert checks["dir"]["count"] == 10 and checks["dir"]["pass_rate"] >= 0.6
    assert report["skipped"] == {}  # rotten tomatoes' labels are positive/negative
    mlflow.set_tracking_uri(params.tracking.uri)
    run = mlflow.search_runs(
        experiment_names=["finetune"], filter_string="tags.`pipeline.stage` = 'evaluate'"
    )
    assert run["metrics.behaviour/mft/pass_rate"].iloc[0] == checks["mft"]["pass_rate"]
    assert "metrics.slice.short.accuracy" in run.columns


def test_the_sst2_preset_maps_its_0_1_labels_to_sentiments():
    from conftest import ROOT

    from tasks.commands.presets import load_preset
    from tasks.core.config import load_params
    from tasks.core.evaluation.behaviour import sentiment_indices

    sst2 = load_params(ROOT / "params.yaml", load_preset("sst2").params).evaluate.behaviour
    assert sentiment_indices({0: "0", 1: "1"}, sst2.sentiment_labels) == {
        "negative": 0,
        "positive": 1,
    }
    default = load_params(ROOT / "params.yaml").evaluate.behaviour
    assert "not one positive and one negative" in sentiment_indices(
        {0: "0", 1: "1"}, default.sentiment_labels
    )
    assert sentiment_indices({0: "negative", 1: "positive"}, default.sentiment_labels) == {
        "negative": 0,
        "positive": 1,
    }
