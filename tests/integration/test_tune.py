"""The tune stage on a tiny random BERT: pruning, reports, MLflow run tree, memory, resume
after SIGKILL, one study per configuration, deterministic best_params.json
and the hand-over to train."""

from __future__ import annotations

import csv
import gc
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import ClassVar

import optuna
import pytest
import yaml
from conftest import (
    ROOT,
    make_project,
    project_env,
    start_point_in,
    tiny_params,
    write_toy_prepared,
)
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial

from tasks.core.config import ParamsError, load_params
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.tuned import apply_tuned_params
from tasks.train import train
from tasks.tune import run_search, tune
from tasks.tuning.data import load_tuning_data, stratified_subset, trivial_baseline
from tasks.tuning.objective import ReportToTrial
from tasks.tuning.results import (
    BEST_PARAMS,
    BEST_PARAMS_KEYS,
    PLOTS,
    REPORT_MD,
    TRIALS_CSV,
    choose,
)
from tasks.tuning.study import FINISHED, study_name

N_TRIALS = 6
# Learning rates from "learns in one epoch" to "still guessing": pruning has work to do.
SPACE = {
    "learning_rate": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16]},
    "epochs": {"type": "int", "low": 2, "high": 3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.1},
}


def tune_section(**changes) -> dict:
    section = {
        "n_trials": N_TRIALS,
        "timeout": None,
        "train_fraction": 1.0,
        "finalists": 0,  # test_finalists_decide_on_the_whole_train_split sets it
        "startup_trials": 2,
        "pruner": {"type": "median", "startup_trials": 1},
        "heartbeat_interval": 1,
        "grace_period": 2,
        "space": SPACE,
    }
    return {**section, **changes}


def make_tracking(directory: Path) -> str:
    """A SQLite MLflow store in ``directory`` whose experiment keeps artifacts there too."""
    import mlflow

    uri = f"sqlite:///{directory / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    if client.get_experiment_by_name("finetune") is None:
        client.create_experiment("finetune", artifact_location=str(directory / "artifacts"))
    return uri


def tokenized_without_test(directory: Path, params) -> Path:
    """Toy data tokenized, then the test split moved away (to ``directory / "test-split"``):
    tuning must never need it."""
    prepared = write_toy_prepared(directory / "prepared")
    tokenized = directory / "tokenized"
    tokenize(params, prepared, tokenized, directory / "tokenize.json", directory / "state")
    (tokenized / "test").rename(directory / "test-split")
    (prepared / "test.parquet").unlink()
    return tokenized


def trial_states(database: Path) -> list[tuple[str, int]]:
    """(state, number of reported evaluations) of the study's trials, read from the SQLite
    file without writing to it."""
    import sqlite3

    query = (
        "SELECT state, (SELECT COUNT(*) FROM trial_intermediate_values v "
        "WHERE v.trial_id = t.trial_id) FROM trials t ORDER BY number"
    )
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1) as connection:
            return list(connection.execute(query).fetchall())
    except sqlite3.Error:
        return []  # not created yet, or busy


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and two threads on a busy 2-core machine
    slow each step down several-fold); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def live_objects(*kinds: type) -> int:
    """How many objects of ``kinds`` are alive (after a collection)."""
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on torch's deprecated aliases warns
        warnings.simplefilter("ignore")
        return sum(isinstance(o, kinds) for o in gc.get_objects())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_model_dir):
    """One study of N_TRIALS trials, run in-process (shared by several tests)."""
    import torch
    from transformers import PreTrainedModel

    directory = tmp_path_factory.mktemp("tune")
    uri = make_tracking(directory)
    # Weaker defaults (a learning rate below the space, fewer epochs): the search wins. The
    # pruner waits for the defaults' last evaluation (their fast schedule leads before it).
    pruner = {"type": "median", "startup_trials": 1, "warmup_steps": 3}
    params = tiny_params(
        "text_classification", tiny_model_dir, tracking={"uri": uri},
        tune=tune_section(pruner=pruner), train={"learning_rate": 2e-3, "epochs": 2},
    )  # fmt: skip
    tokenized = tokenized_without_test(directory, params)
    before = live_objects(PreTrainedModel, torch.optim.Optimizer)
    summary = tune(params, tokenized, directory / "reports", directory / "state")
    leftover = live_objects(PreTrainedModel, torch.optim.Optimizer) - before
    return {
        "dir": directory, "params": params, "summary": summary, "uri": uri,
        "tokenized": tokenized, "leftover": leftover,
    }  # fmt: skip


def storage_url(directory: Path, state: str = "state") -> str:
    return f"sqlite:///{directory / state / 'optuna/optuna.db'}"


def load_study(directory: Path, name: str, state: str = "state") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(directory, state))


def best_params_of(summary: dict) -> dict:
    """What best_params.json holds: the summary's deterministic keys."""
    return {key: summary[key] for key in BEST_PARAMS_KEYS if key in summary}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_tiny_study_beats_its_defaults_and_reports(tuned):
    summary, reports = tuned["summary"], tuned["dir"] / "reports"
    assert summary["status"] == "tuned" and summary["metric"] == "f1_macro"
    assert summary["trials"].get("COMPLETE", 0) >= 2
    assert summary["trials"].get("COMPLETE", 0) + summary["trials"].get("PRUNED", 0) == N_TRIALS
    assert set(summary["params"]) == set(SPACE) and summary["best_value"] >= 0.9
    # The first trial ran params.yaml's values (those inside the space are its parameters),
    # whole, and lost: the tuned values are used.
    assert summary["source"] == "tuned" and summary["defaults_trial"] == 0
    assert summary["best_value"] > summary["defaults_value"] >= summary["baseline"] > 0
    study = load_study(tuned["dir"], summary["study_name"])
    first = study.trials[0]
    assert first.user_attrs["role"] == "defaults" and first.state.name == "COMPLETE"
    assert first.params == {"batch_size": 16, "epochs": 2}  # lr 2e-3 and dropout null: outside
    assert first.user_attrs["defaults"]["learning_rate"] == 2e-3
    assert len(first.intermediate_values) == 2 * 2  # every epoch, never pruned
    assert [t.user_attrs.get("role") for t in study.trials[1:]] == [None] * (N_TRIALS - 1)
    assert json.loads((reports / BEST_PARAMS).read_text()) == best_params_of(summary)
    assert summary["study_name"] == f"finetune-{summary['fingerprint']}"

    rows = read_csv(reports / TRIALS_CSV)
    assert [int(r["number"]) for r in rows] == list(range(N_TRIALS))
    assert {"number", "state", "value", "duration", "epochs_run", "role"} <= set(rows[0])
    assert {f"params_{name}" for name in SPACE} <= set(rows[0])
    assert [r["role"] for r in rows] == ["defaults"] + ["search"] * (N_TRIALS - 1)
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    assert int(best["number"]) == summary["best_trial"]
    assert summary["trial_epochs"] == pytest.approx(sum(float(r["epochs_run"]) for r in rows))

    for name in PLOTS.values():
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (reports / REPORT_MD).read_text()
    assert f"Tuned: trial {summary['best_trial']}" in report
    assert "| 0 | COMPLETE (defaults) |" in report
    assert all(f"]({name})" in report for name in PLOTS.values())

    # Every evaluation reported to the pruner: evals_per_epoch (2) per epoch run.
    study = load_study(tuned["dir"], summary["study_name"])
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1))
        assert len(steps) == round(2 * trial.user_attrs["epochs_run"])


def test_strong_defaults_lead_the_pruner_and_are_kept(toy_inputs, tiny_model_dir, tmp_path):
    """Defaults that learn the toy task (lr 1e-2, 6 epochs): the median pruner measures the
    searched trials against them and stops the slower ones; nothing beats them, so
    best_params.json says so and train keeps params.yaml."""
    params = tiny_params(
        "text_classification", tiny_model_dir, tracking={"uri": toy_inputs["uri"]},
        tune=tune_section(n_trials=4),
    )  # fmt: skip
    reports = tmp_path / "reports"
    summary = tune(params, toy_inputs["tokenized"]["old"], reports, tmp_path / "state")
    best = json.loads((reports / BEST_PARAMS).read_text())
    assert best["source"] == "defaults" and best["params"] == {}
    assert best["best_trial"] == best["defaults_trial"] == 0
    assert best["best_value"] == best["defaults_value"] > best["baseline"]
    assert "no searched trial beats the defaults (trial 0" in best["reason"]
    assert summary["trials"].get("PRUNED", 0) >= 1  # the defaults trial counts in n_trials
    assert sum(summary["trials"].values()) == 4
    # Pruned trials stop at the evaluation that was not promising (possibly the last one).
    rows = read_csv(reports / TRIALS_CSV)
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert all(float(r["epochs_run"]) <= int(r["params_epochs"]) for r in pruned)
    assert any(float(r["epochs_run"]) < int(r["params_epochs"]) for r in pruned)
    assert "**Defaults kept**" in (reports / REPORT_MD).read_text()

    resolved, provenance = apply_tuned_params(params, reports / BEST_PARAMS)
    assert resolved.train == params.train and provenance["params_source"] == "params.yaml"
    assert "source 'defaults'" in provenance["reason"] and provenance["best_trial"] == 0


def test_ner_trials_are_not_pruned_before_their_entity_f1_is_measurable():
    """The reporter (the trial's TrainerCallback) against a real median pruner whose
    reference trial scored 0.5 at every evaluation: for a token task a trial still at entity
    F1 0 is not judged (no whole entity found yet: all such trials tie), from its first score
    above 0 it is; a text task, or the defaults trial, as configured."""
    from transformers import TrainerControl

    def evaluate(reporter, value):
        control = TrainerControl()
        reporter.on_evaluate(None, None, control, metrics={"eval_f1_micro": value})
        return reporter.pruned, control.should_training_stop

    study = optuna.create_study(
        direction="maximize", pruner=optuna.pruners.MedianPruner(n_startup_trials=1)
    )
    study.add_trial(
        optuna.trial.create_trial(value=0.5, intermediate_values={1: 0.5, 2: 0.5, 3: 0.5})
    )
    ner = ReportToTrial(study.ask(), "f1_micro", 1, False, wait_for_signal=True)
    assert evaluate(ner, 0.0) == (False, False)  # at 0: not judged
    assert evaluate(ner, 0.0) == (False, False)
    assert evaluate(ner, 0.1) == (True, True)  # measurable, and below the median: pruned
    text = ReportToTrial(study.ask(), "f1_micro", 1, False)
    assert evaluate(text, 0.0) == (True, True)  # no waiting for other tasks
    defaults = ReportToTrial(study.ask(), "f1_micro", 1, False, prunable=False)
    assert evaluate(defaults, 0.1) == (False, False)  # asked (a reference), never stopped


def finished(number: int, value: float, role: str | None = None, **params) -> FrozenTrial:
    """A complete trial (real Optuna object) with ``value`` and ``role``."""
    distributions = {name: FloatDistribution(1e-6, 1.0) for name in params}
    attrs = {"role": role, "defaults": DEFAULTS} if role else {}
    trial = optuna.trial.create_trial(
        value=value, params=params, distributions=distributions, user_attrs=attrs
    )
    trial.number = number
    return trial


DEFAULTS = {"learning_rate": 5e-5}


def test_the_choice_compares_with_the_defaults_and_the_trivial_baseline():
    defaults = finished(0, 0.80, "defaults", learning_rate=5e-5)
    better, worse = finished(1, 0.85, learning_rate=1e-4), finished(2, 0.70, learning_rate=1e-3)
    tie = finished(3, 0.80, learning_rate=2e-4)
    chosen = choose([defaults, better, worse], 0.33, DEFAULTS, "f1_macro")
    assert chosen["source"] == "tuned" and chosen["best_trial"] == 1
    assert chosen["params"] == {"learning_rate": 1e-4}
    chosen = choose([defaults, worse, tie], 0.33, DEFAULTS, "f1_macro")  # a tie keeps defaults
    assert chosen["source"] == "defaults" and chosen["best_trial"] == 0 and chosen["params"] == {}
    # At the baseline (a constant prediction) nothing is chosen: not even the defaults.
    flat = [finished(0, 0.33, "defaults", learning_rate=5e-5), finished(1, 0.33, lr=1e-3)]
    chosen = choose(flat, 0.33, DEFAULTS, "f1_macro")
    assert chosen["source"] == "defaults" and chosen["best_trial"] is None
    assert (
        chosen["best_value"] is None and "no trial beats the trivial baseline" in chosen["reason"]
    )
    # Defaults that did not finish (timed out): a searched trial above the baseline wins.
    chosen = choose([worse], 0.33, DEFAULTS, "f1_macro")
    assert chosen["source"] == "tuned" and chosen["defaults_trial"] is None
    # Defaults of other train values (train changed since) are not this run's defaults.
    other = finished(0, 0.9, "defaults", learning_rate=5e-5)
    other.user_attrs["defaults"] = {"learning_rate": 1e-5}
    assert choose([other, worse], 0.33, DEFAULTS, "f1_macro")["best_trial"] == 2


def test_trivial_baselines_are_constant_predictions():
    # Text: the most frequent label everywhere.
    labels = ["negative", "positive"]
    assert trivial_baseline("text_classification", [0, 0, 0, 1], labels, "accuracy") == 0.75
    macro = trivial_baseline("text_classification", [0, 0, 0, 1], labels, "f1_macro")
    assert macro == pytest.approx((2 * 0.75 / 1.75) / 2)
    # Token: no entities (O everywhere): entity F1 0, token accuracy the share of O.
    tags = ["O", "B-PER", "I-PER"]
    gold = [[-100, 1, 2, 0, -100], [-100, 0, 0, -100]]
    assert trivial_baseline("token_classification", gold, tags, "f1_micro") == 0.0
    assert trivial_baseline("token_classification", gold, tags, "token_accuracy") == 0.6


def test_trials_are_nested_mlflow_runs_with_their_states(tuned):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tuned["uri"])
    experiment = client.get_experiment_by_name("finetune").experiment_id
    stage = client.search_runs([experiment], "tags.`pipeline.stage` = 'tune'")
    assert len(stage) == 1
    stage = stage[0]
    assert stage.data.metrics["best_value"] == tuned["summary"]["best_value"]
    artifacts = {a.path for a in client.list_artifacts(stage.info.run_id, "tune")}
    assert {f"tune/{name}" for name in (BEST_PARAMS, TRIALS_CSV, *PLOTS.values())} <= artifacts

    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{stage.info.run_id}'"
    )
    trials = {t.number: t for t in load_study(tuned["dir"], tuned["summary"]["study_name"]).trials}
    assert sorted(int(r.data.tags["trial.number"]) for r in children) == sorted(trials)
    metric = tuned["summary"]["metric"]
    for run in children:
        trial = trials[int(run.data.tags["trial.number"])]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["trial.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        # The defaults trial's learning rate lies outside the space: not a trial parameter.
        values = {**trial.user_attrs.get("defaults", {}), **trial.params}
        assert run.data.params["learning_rate"] == str(values["learning_rate"])
        assert run.data.metrics["duration_s"] > 0
        history = client.get_metric_history(run.info.run_id, metric)
        assert [(m.step, m.value) for m in history] == sorted(trial.intermediate_values.items())


def test_trials_free_their_models_and_memory_does_not_grow(tuned):
    assert tuned["leftover"] == 0  # no model or optimizer survives the study
    study = load_study(tuned["dir"], tuned["summary"]["study_name"])
    rss = [t.user_attrs["rss_mb"] for t in study.trials]
    assert len(rss) == N_TRIALS
    for later in rss[2:]:
        assert later / rss[1] < 1.10, rss  # after trial k vs after trial 2


def test_timeout_stops_the_running_trial(tuned, monkeypatch):
    """The budget runs out right after the first trial's first evaluation: an event, not a
    race between a short timeout and the machine's speed."""
    params = tuned["params"]
    data = load_tuning_data(params, tuned["tokenized"], tuned["dir"] / "state")
    study = optuna.create_study(direction="maximize")
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    report = optuna.trial.Trial.report

    def report_then_run_out(trial, value, step):
        report(trial, value, step)
        clock[0] = 3600.0  # the one-hour budget is spent from here on

    monkeypatch.setattr(optuna.trial.Trial, "report", report_then_run_out)
    run_search(params, data, study, timeout=3600 - 1)
    (trial,) = study.trials  # no further trial starts
    # A failed trial (never pruned, never a best), marked as stopped by the timeout.
    assert trial.state.name == "FAIL" and trial.user_attrs["stopped"] == "timeout"
    assert trial.user_attrs["fail_reason"].startswith("timeout: stopped by tune.timeout")
    assert 0 < trial.user_attrs["epochs_run"] < trial.params["epochs"]


def test_train_uses_the_best_params_and_says_so(tuned, tmp_path):
    summary, params = tuned["summary"], tuned["params"]
    reports = tmp_path / "reports"
    reports.mkdir()
    shutil.copy(tuned["dir"] / "reports" / BEST_PARAMS, reports / BEST_PARAMS)
    # Train loads the whole DatasetDict: give it the test split back.
    tokenized = tmp_path / "tokenized"
    shutil.copytree(tuned["tokenized"], tokenized)
    shutil.copytree(tuned["dir"] / "test-split", tokenized / "test")
    metrics = train(params, tokenized, tmp_path / "model", reports, tmp_path / "state")

    assert metrics["params_source"] == "tune"
    assert metrics["tuned_params"] == summary["params"]
    assert metrics["epochs_planned"] == summary["params"]["epochs"] != params.train.epochs
    recorded = json.loads((tmp_path / "model" / "training_params.json").read_text())
    assert recorded["params_source"] == "tune"
    assert recorded["best_trial"] == summary["best_trial"]
    for key, value in summary["params"].items():
        assert recorded["train"][key] == value
    assert recorded["train"]["seed"] == params.train.seed  # untuned keys: params.yaml

    # tune.enabled false: params.yaml alone, even with a best_params.json present.
    off = params.model_copy(update={"tune": params.tune.model_copy(update={"enabled": False})})
    resolved, provenance = apply_tuned_params(off, reports / BEST_PARAMS)
    assert provenance["params_source"] == "params.yaml" and resolved.train == params.train


def test_disabled_tuning_writes_its_outputs(tmp_path, tiny_model_dir):
    params = tiny_params("text_classification", tiny_model_dir, tune={"enabled": False})
    summary = tune(params, tmp_path / "absent", tmp_path / "reports", tmp_path / "state")
    assert summary["status"] == "disabled"
    reports = tmp_path / "reports"
    assert json.loads((reports / BEST_PARAMS).read_text())["status"] == "disabled"
    assert read_csv(reports / TRIALS_CSV) == []
    assert "disabled" in (reports / REPORT_MD).read_text()
    assert all((reports / name).is_file() for name in PLOTS.values())
    resolved, provenance = apply_tuned_params(params, reports / BEST_PARAMS)
    assert provenance["params_source"] == "params.yaml" and resolved == params


def test_killed_study_resumes_and_keeps_finished_trials(tmp_path, tiny_model_dir):
    uri = make_tracking(tmp_path)
    # The CLI runs in a project copy: it accepts a start point from models/pretrained only.
    project = make_project(tmp_path / "project")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(start_point_in(project, tiny_model_dir))
    raw["tokenize"]["max_length"] = 32
    raw["tracking"]["uri"] = uri
    raw["train"].update(precision="fp32")
    raw["tune"] = tune_section(n_trials=4, pruner={"type": "none"})
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    params = load_params(params_path)
    tokenized = tokenized_without_test(tmp_path, params)
    dirs = ["--tokenized-dir", str(tokenized), "--reports-dir", str(tmp_path / "reports")]
    dirs += ["--state-dir", str(tmp_path / "state")]
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks.tune", "--params", str(params_path), *dirs],
        cwd=project, env={**project_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    database = tmp_path / "state/optuna/optuna.db"
    deadline = time.monotonic() + 180
    while True:  # kill once a trial has finished and the next one is half-way through
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no trial finished in time"
        states = trial_states(database)
        finished = any(state == "COMPLETE" for state, _ in states)
        if finished and states[-1][0] == "RUNNING" and states[-1][1] >= 1:
            break
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    process.stderr.close()
    name = study_name(params, load_tuning_data(params, tokenized, tmp_path / "state").fingerprint)
    before = {t.number: t for t in load_study(tmp_path, name).trials}
    killed = [t for t in before.values() if t.state.name == "RUNNING"]
    finished = {n: t.value for n, t in before.items() if t.state.name == "COMPLETE"}
    assert len(killed) == 1 and finished

    summary = tune(params, tokenized, tmp_path / "reports", tmp_path / "state")
    assert summary["study_name"] == name
    after = {t.number: t for t in load_study(tmp_path, name).trials}
    assert {n: after[n].value for n in finished} == finished  # kept, not re-run
    assert after[killed[0].number].state.name == "FAIL"  # its worker died
    retried = [t for t in after.values() if t.user_attrs.get("retry_of") == killed[0].number]
    assert len(retried) == 1 and retried[0].params == killed[0].params
    assert retried[0].state.name == "COMPLETE"
    assert sum(t.state.name == "COMPLETE" for t in after.values()) == 4
    assert summary["trials"] == {"COMPLETE": 4, "FAIL": 1}

    import mlflow  # the dead trial's run is closed as FAILED, not left running

    run = mlflow.MlflowClient(tracking_uri=uri).get_run(killed[0].user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED" and run.data.tags["trial.state"] == "FAIL"


def test_search_space_and_storage_are_validated():
    cases = {
        "tune.space": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
        "tune.space.learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True},
        "tune.space.epochs": {"type": "float", "low": 1, "high": 3},
        "tune.space.batch_size": {"type": "categorical", "choices": [0, 16]},
        "tune.storage": "optuna.db",
        "tune.n_jobs": 2,
    }
    expected = {
        "tune.space": "tune.space.lr: not a tunable train key",
        "tune.space.learning_rate": "tune.space.learning_rate: a log scale needs low > 0",
        "tune.space.epochs": "train.epochs is an integer",
        "tune.space.batch_size": "0 is not a valid train.batch_size (must be > 0)",
        "tune.storage": "'optuna.db' is not a database URL",
        "tune.n_jobs": "n_jobs was removed: the stage no longer spawns workers; run "
        "`python -m tasks.tune --worker`",
    }
    for key, value in cases.items():
        with pytest.raises(ParamsError, match=re.escape(expected[key])):
            load_params(overrides={key: value})


def test_stratified_subset_keeps_label_shares():
    keys = ["a"] * 80 + ["b"] * 20
    chosen = stratified_subset(keys, 0.25, seed=1)
    assert [keys[i] for i in chosen].count("a") == 20
    assert [keys[i] for i in chosen].count("b") == 5
    assert chosen == stratified_subset(keys, 0.25, seed=1) != stratified_subset(keys, 0.25, 2)
    assert stratified_subset(keys, 1.0, seed=1) == list(range(100))


# --- one study per configuration --------------------------------------------------------------

# One dimension, half of train, one epoch, one evaluation, no pruner: a trial takes a second
# (and learns little: these tests are about studies, not scores).
FAST_SPACE = {"learning_rate": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True}}


def fast_params(model: Path, uri: str, epochs: int = 1, train_changes=None, **tune_changes):
    changes = {
        "n_trials": 2, "space": FAST_SPACE, "pruner": {"type": "none"}, "train_fraction": 0.5,
        "evals_per_epoch": 1, **tune_changes,
    }  # fmt: skip
    return tiny_params(
        "text_classification", model, tracking={"uri": uri},
        train={"epochs": epochs, **(train_changes or {})}, tune=tune_section(**changes),
    )  # fmt: skip


@pytest.fixture(scope="module")
def toy_inputs(tmp_path_factory, tiny_model_dir):
    """One MLflow store and two tokenized data sets (the second: other examples)."""
    directory = tmp_path_factory.mktemp("configurations")
    uri = make_tracking(directory)
    params = fast_params(tiny_model_dir, uri)
    tokenized = {}
    for name, n_train in (("old", 240), ("new", 200)):
        prepared = write_toy_prepared(directory / name / "prepared", n_train=n_train)
        tokenized[name] = directory / name / "tokenized"
        state = directory / name / "tokenize-state"
        tokenize(params, prepared, tokenized[name], directory / name / "tokenize.json", state)
    return {"dir": directory, "uri": uri, "tokenized": tokenized}


def test_a_rerun_continues_its_study_up_to_n_trials(toy_inputs, tiny_model_dir, tmp_path):
    uri, tokenized = toy_inputs["uri"], toy_inputs["tokenized"]["old"]
    reports, state = tmp_path / "reports", tmp_path / "state"
    # A first run out of time: its only trial (the defaults) stops at the first step, failed
    # as timed out (not finished), so the stage fails but the study keeps the trial.
    with pytest.raises(StageError, match=r"no trial of study 'finetune-[0-9a-f]{12}' completed"):
        tune(fast_params(tiny_model_dir, uri, timeout=0.01), tokenized, reports, state)
    (name,) = optuna.get_all_study_names(storage_url(tmp_path))
    (stopped,) = load_study(tmp_path, name).trials
    assert stopped.state.name == "FAIL" and stopped.user_attrs["stopped"] == "timeout"
    assert stopped.user_attrs["role"] == "defaults"

    params = fast_params(tiny_model_dir, uri)  # same configuration: n_trials 2, no timeout
    summary = tune(params, tokenized, reports, state)
    assert summary["study_name"] == name  # continued, not a new study
    assert summary["trials"] == {"FAIL": 1, "COMPLETE": 2}  # two finished trials were missing
    trials = load_study(tmp_path, name).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert trials[0].datetime_start == stopped.datetime_start  # kept, not re-run
    assert trials[1].user_attrs["role"] == "defaults"  # queued again: the failed one is absent
    assert summary["defaults_trial"] == 1
    report = (reports / REPORT_MD).read_text()
    assert "| 0 | timed out (FAIL) (defaults) |" in report
    assert read_csv(reports / TRIALS_CSV)[0]["stopped"] == "timeout"
    first = (reports / BEST_PARAMS).read_bytes()

    again = tune(params, tokenized, reports, state)  # the study is complete: no trial runs
    assert len(load_study(tmp_path, name).trials) == 3
    assert again["trials"] == summary["trials"] and again["other_studies"] == []
    assert (reports / BEST_PARAMS).read_bytes() == first
    assert optuna.get_all_study_names(storage_url(tmp_path)) == [name]

    # A train value inside the space changed: same study (same fingerprint), and its new
    # defaults are measured although the study already holds n_trials finished trials.
    changed = fast_params(tiny_model_dir, uri, train_changes={"learning_rate": 5e-3})
    summary = tune(changed, tokenized, reports, state)
    assert summary["study_name"] == name
    trials = load_study(tmp_path, name).trials
    assert len(trials) == 4 and trials[3].user_attrs["role"] == "defaults"
    assert trials[3].params == {"learning_rate": 5e-3} and summary["defaults_trial"] == 3


class SpySampler(optuna.samplers.TPESampler):
    """The stage's TPE sampler, recording the finished trials it models each sample on."""

    seen: ClassVar[list[tuple[str, list[int]]]] = []

    def sample_independent(self, study, trial, param_name, param_distribution):
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        self.seen.append((study.study_name, [t._trial_id for t in finished]))
        return super().sample_independent(study, trial, param_name, param_distribution)


@pytest.fixture(scope="module")
def changed_data(toy_inputs, tiny_model_dir):
    """The same params tuned on the old data, then on new data, in one storage; the sampler
    is the stage's own TPE sampler, recording what it sees."""
    import tasks.tune as stage

    directory = toy_inputs["dir"] / "changed"
    params = fast_params(tiny_model_dir, toy_inputs["uri"])
    SpySampler.seen = []

    make_sampler = stage.make_sampler

    def spy(params, seed):
        sampler = make_sampler(params, seed)  # configured as always, only observed
        assert type(sampler) is optuna.samplers.TPESampler
        sampler.__class__ = SpySampler
        return sampler

    summaries = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stage, "make_sampler", spy)
        for name in ("old", "new"):
            tokenized = toy_inputs["tokenized"][name]
            summaries[name] = tune(params, tokenized, directory / "reports", directory / "state")
    return {"dir": directory, "summaries": summaries, "seen": list(SpySampler.seen)}


def test_changed_data_starts_a_new_study_and_keeps_the_old(changed_data):
    old, new = changed_data["summaries"]["old"], changed_data["summaries"]["new"]
    assert old["fingerprint"] != new["fingerprint"]
    assert old["study_name"] == f"finetune-{old['fingerprint']}"
    assert new["study_name"] == f"finetune-{new['fingerprint']}"
    storage = storage_url(changed_data["dir"])
    assert sorted(optuna.get_all_study_names(storage)) == sorted(
        [old["study_name"], new["study_name"]]
    )
    kept = load_study(changed_data["dir"], old["study_name"]).trials
    assert len(kept) == 2 and all(t.state.name == "COMPLETE" for t in kept)  # untouched
    # (One epoch on half the toy data learns nothing: no trial beats the trivial baseline.)
    assert old["best_trial"] is None and old["source"] == "defaults"
    top = max(kept, key=lambda t: (t.value, -t.number))
    assert new["trials"] == {"COMPLETE": 2}  # its own n_trials, not topped up from the old
    assert old["other_studies"] == []
    (listed,) = new["other_studies"]
    assert listed["study_name"] == old["study_name"] and listed["trials"] == 2
    assert listed["best_value"] == top.value  # Optuna's best, as stored

    report = (changed_data["dir"] / "reports" / REPORT_MD).read_text()
    section = report.split("## Other studies", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in section.splitlines() if old["study_name"] in line)
    assert f"| 2 | {top.value:.4g} | {top.number} |" in row
    assert new["study_name"] not in section


def test_the_new_study_samples_without_the_old_trials(changed_data):
    directory, summaries = changed_data["dir"], changed_data["summaries"]
    old = load_study(directory, summaries["old"]["study_name"]).trials
    new = load_study(directory, summaries["new"]["study_name"]).trials
    old_ids = {t._trial_id for t in old}
    seen = changed_data["seen"]
    # One dimension sampled per searched trial (the defaults trial's value is fixed).
    assert [name for name, _ in seen] == [summaries[k]["study_name"] for k in ("old", "new")]
    assert not set(seen[1][1]) & old_ids
    assert seen[1][1] == [new[0]._trial_id]  # the new study's own defaults trial only
    # A fresh search: numbers from 0, and the same first (random) point as the old one.
    assert [t.number for t in new] == [0, 1]
    assert new[0].user_attrs["role"] == old[0].user_attrs["role"] == "defaults"
    assert new[1].params == old[1].params


def test_best_params_are_identical_for_identical_runs(toy_inputs, tiny_model_dir, tmp_path):
    # Enough training for scores that differ between trials (fast_params' do not).
    params = fast_params(tiny_model_dir, toy_inputs["uri"], epochs=2, train_fraction=1.0)
    tokenized = toy_inputs["tokenized"]["old"]
    outputs = []
    for run in ("first", "second"):  # fresh storage, reports and state each
        tune(params, tokenized, tmp_path / run / "reports", tmp_path / run / "state")
        outputs.append((tmp_path / run / "reports" / BEST_PARAMS).read_bytes())
    assert outputs[0] == outputs[1]
    best = json.loads(outputs[0])
    assert best["best_value"] > 0.5  # a trained model's score
    assert set(best) == set(BEST_PARAMS_KEYS)
    assert str(tmp_path) not in outputs[0].decode()  # no storage path, no run state
    # Timings are in the other reports (nothing depends on them).
    rows = {run: read_csv(tmp_path / run / "reports" / TRIALS_CSV) for run in ("first", "second")}
    assert [r["value"] for r in rows["first"]] == [r["value"] for r in rows["second"]]
    assert all(float(r["duration"]) > 0 for r in rows["first"])


def test_finalists_decide_on_the_whole_train_split(toy_inputs, tiny_model_dir, tmp_path):
    """Defaults that cannot learn (lr 1e-6) lose on the share; the best searched trial and
    the defaults are trained again on all of train in the study ``{name}-full`` and the choice
    is made from those scores; a re-run trains nothing again and writes the same choice."""
    params = fast_params(
        tiny_model_dir, toy_inputs["uri"], epochs=3, n_trials=3, train_fraction=0.5,
        finalists=1, train_changes={"learning_rate": 1e-6, "batch_size": 8},
    )  # fmt: skip
    tokenized = toy_inputs["tokenized"]["old"]  # 240 train examples: 120 in the share
    reports, state = tmp_path / "reports", tmp_path / "state"
    summary = tune(params, tokenized, reports, state)
    search = load_study(tmp_path, summary["study_name"])
    full = load_study(tmp_path, summary["study_name"] + "-full")
    assert [t.user_attrs.get("train_examples") for t in search.trials] == [120] * 3
    assert [t.state.name for t in full.trials] == ["COMPLETE", "COMPLETE"]
    assert [t.user_attrs.get("train_examples") for t in full.trials] == [240, 240]
    defaults, finalist = full.trials
    assert defaults.user_attrs["role"] == "defaults"
    leader = max(search.trials[1:], key=lambda t: (t.value, -t.number))
    assert finalist.user_attrs["search_trial"] == leader.number
    assert finalist.params == leader.params
    # The decision is the whole split's: the finalist only if it beats the defaults there.
    assert summary["decided_on"] == "whole train split"
    assert summary["finalists"] == [
        {"trial": leader.number, "share_value": leader.value, "full_value": finalist.value}
    ]
    assert summary["defaults_full_value"] == defaults.value
    if finalist.value > defaults.value:
        assert summary["source"] == "tuned" and summary["params"] == leader.params
        assert summary["best_trial"] == leader.number
    else:
        assert summary["source"] == "defaults" and summary["params"] == {}
    assert summary["best_value"] == max(finalist.value, defaults.value)
    assert summary["examples_trained"] == round(
        sum(t.user_attrs["epochs_run"] * 120 for t in search.trials)
        + sum(t.user_attrs["epochs_run"] * 240 for t in full.trials)
    )
    assert "## Finalists (whole train split)" in (reports / REPORT_MD).read_text()
    first = (reports / BEST_PARAMS).read_bytes()
    assert json.loads(first) == best_params_of(summary)

    tune(params, tokenized, reports, state)  # nothing left to train: same study, same choice
    assert len(load_study(tmp_path, summary["study_name"] + "-full").trials) == 2
    assert (reports / BEST_PARAMS).read_bytes() == first


def test_an_unloadable_model_fails_before_any_trial(toy_inputs, tiny_model_dir, tmp_path):
    """A start point whose weights are a code-running pickle (refused by torch's weights_only
    loader) stops the stage with one message; no trial is started."""
    bad = tmp_path / "bad-model"
    shutil.copytree(tiny_model_dir, bad)
    for weights in bad.glob("*.safetensors"):
        weights.unlink()
    with (bad / "pytorch_model.bin").open("wb") as handle:
        pickle.dump(RunsCode(), handle)
    params = fast_params(bad, toy_inputs["uri"])
    with pytest.raises(StageError, match=r"cannot load a model from .*bad-model: Weights only"):
        tune(params, toy_inputs["tokenized"]["old"], tmp_path / "reports", tmp_path / "state")
    assert not (tmp_path / "state" / "optuna").exists()  # no study, no trial


class RunsCode:
    """Unpickling this would run a shell command; torch refuses it."""

    def __reduce__(self):
        return (os.system, ("echo this should never run",))
