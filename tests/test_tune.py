"""The tune stage on a tiny random BERT: pruning, reports, MLflow run tree, memory, resume
after SIGKILL, parallel workers, and the hand-over to train."""

from __future__ import annotations

import csv
import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, project_env, tiny_params, write_toy_prepared

from tasks.config import ParamsError, apply_tuned_params, load_params
from tasks.tokenize import tokenize
from tasks.train import train
from tasks.tune import (
    BEST_PARAMS,
    PLOTS,
    REPORT_MD,
    TRIALS_CSV,
    load_tuning_data,
    run_search,
    stratified_subset,
    tune,
)

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
    params = tiny_params(
        "text_classification", tiny_model_dir, tracking={"uri": uri}, tune=tune_section()
    )
    tokenized = tokenized_without_test(directory, params)
    before = live_objects(PreTrainedModel, torch.optim.Optimizer)
    summary = tune(params, tokenized, directory / "reports", directory / "state")
    leftover = live_objects(PreTrainedModel, torch.optim.Optimizer) - before
    return {
        "dir": directory, "params": params, "summary": summary, "uri": uri,
        "tokenized": tokenized, "leftover": leftover,
    }  # fmt: skip


def load_study(directory: Path, name: str = "finetune") -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=f"sqlite:///{directory / 'state/optuna/optuna.db'}"
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_tiny_study_prunes_and_reports(tuned):
    summary, reports = tuned["summary"], tuned["dir"] / "reports"
    assert summary["status"] == "tuned" and summary["metric"] == "f1_macro"
    assert summary["trials"].get("PRUNED", 0) >= 1 and summary["trials"].get("COMPLETE", 0) >= 1
    assert summary["trials"]["COMPLETE"] + summary["trials"]["PRUNED"] == N_TRIALS
    assert set(summary["params"]) == set(SPACE) and summary["best_value"] >= 0.9
    assert json.loads((reports / BEST_PARAMS).read_text()) == summary

    rows = read_csv(reports / TRIALS_CSV)
    assert [int(r["number"]) for r in rows] == list(range(N_TRIALS))
    assert {"number", "state", "value", "duration", "epochs_run"} <= set(rows[0])
    assert {f"params_{name}" for name in SPACE} <= set(rows[0])
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    assert int(best["number"]) == summary["best_trial"]
    # Pruned trials stop at the evaluation that was not promising (possibly the last one).
    pruned = [r for r in rows if r["state"] == "PRUNED"]
    assert all(float(r["epochs_run"]) <= int(r["params_epochs"]) for r in pruned)
    assert any(float(r["epochs_run"]) < int(r["params_epochs"]) for r in pruned)
    assert summary["trial_epochs"] == pytest.approx(sum(float(r["epochs_run"]) for r in rows))

    for name in PLOTS.values():
        assert (reports / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = (reports / REPORT_MD).read_text()
    assert f"Best: trial {summary['best_trial']}" in report
    assert all(f"]({name})" in report for name in PLOTS.values())

    # Every evaluation reported to the pruner: evals_per_epoch (2) per epoch run.
    study = load_study(tuned["dir"])
    for trial in study.trials:
        steps = sorted(trial.intermediate_values)
        assert steps == list(range(1, len(steps) + 1))
        assert len(steps) == round(2 * trial.user_attrs["epochs_run"])


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
    trials = {t.number: t for t in load_study(tuned["dir"]).trials}
    assert sorted(int(r.data.tags["trial.number"]) for r in children) == sorted(trials)
    metric = tuned["summary"]["metric"]
    for run in children:
        trial = trials[int(run.data.tags["trial.number"])]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["trial.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        assert run.data.params["learning_rate"] == str(trial.params["learning_rate"])
        assert run.data.metrics["duration_s"] > 0
        history = client.get_metric_history(run.info.run_id, metric)
        assert [(m.step, m.value) for m in history] == sorted(trial.intermediate_values.items())


def test_trials_free_their_models_and_memory_does_not_grow(tuned):
    assert tuned["leftover"] == 0  # no model or optimizer survives the study
    rss = [t.user_attrs["rss_mb"] for t in load_study(tuned["dir"]).trials]
    assert len(rss) == N_TRIALS
    for later in rss[2:]:
        assert later / rss[1] < 1.10, rss  # after trial k vs after trial 2


def test_timeout_stops_the_running_trial(tuned):
    params = tuned["params"]
    data = load_tuning_data(params, tuned["tokenized"], tuned["dir"] / "state")
    study = optuna.create_study(direction="maximize")
    run_search(params, data, study, n_trials=3, timeout=0.5)  # spent within the first trial
    (trial,) = study.trials  # no further trial starts
    assert trial.state.name == "PRUNED" and trial.user_attrs["stopped"] == "timeout"
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
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(tiny_model_dir)
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
        cwd=ROOT, env={**project_env(), "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
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
    before = {t.number: t for t in load_study(tmp_path).trials}
    killed = [t for t in before.values() if t.state.name == "RUNNING"]
    finished = {n: t.value for n, t in before.items() if t.state.name == "COMPLETE"}
    assert len(killed) == 1 and finished

    summary = tune(params, tokenized, tmp_path / "reports", tmp_path / "state")
    after = {t.number: t for t in load_study(tmp_path).trials}
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


def test_two_workers_share_one_study(tmp_path, tiny_model_dir):
    import mlflow

    uri = make_tracking(tmp_path)
    params = tiny_params(
        "text_classification", tiny_model_dir, tracking={"uri": uri},
        tune=tune_section(n_trials=4, n_jobs=2, pruner={"type": "none"}),
    )  # fmt: skip
    tokenized = tokenized_without_test(tmp_path, params)
    summary = tune(params, tokenized, tmp_path / "reports", tmp_path / "state")
    assert summary["storage"].startswith("journal:")
    assert summary["trials"] == {"COMPLETE": 4}

    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

    path = str(tmp_path / "state/optuna/journal.log")
    storage = JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))
    trials = optuna.load_study(study_name="finetune", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # no duplicates, none lost
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # distinct samples

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("finetune").experiment_id
    (stage,) = client.search_runs([experiment], "tags.`pipeline.stage` = 'tune'")
    children = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{stage.info.run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == [f"trial-{n}" for n in range(4)]


def test_search_space_and_storage_are_validated():
    cases = {
        "tune.space": {"lr": {"type": "float", "low": 1e-5, "high": 1e-3}},
        "tune.space.learning_rate": {"type": "float", "low": 0, "high": 1e-3, "log": True},
        "tune.space.epochs": {"type": "float", "low": 1, "high": 3},
        "tune.space.batch_size": {"type": "categorical", "choices": [0, 16]},
        "tune.storage": "optuna.db",
    }
    expected = {
        "tune.space": "tune.space.lr: not a tunable train key",
        "tune.space.learning_rate": "tune.space.learning_rate: a log scale needs low > 0",
        "tune.space.epochs": "train.epochs is an integer",
        "tune.space.batch_size": "0 is not a valid train.batch_size (must be > 0)",
        "tune.storage": "neither journal:PATH nor a database URL",
    }
    for key, value in cases.items():
        with pytest.raises(ParamsError, match=re.escape(expected[key])):
            load_params(overrides={key: value})
    with pytest.raises(ParamsError, match="SQLite storage does not support"):
        load_params(overrides={"tune.n_jobs": 2, "tune.storage": "sqlite:///x.db"})
    assert load_params(overrides={"tune.n_jobs": 2}).tune.n_jobs == 2  # default: journal


def test_stratified_subset_keeps_label_shares():
    keys = ["a"] * 80 + ["b"] * 20
    chosen = stratified_subset(keys, 0.25, seed=1)
    assert [keys[i] for i in chosen].count("a") == 20
    assert [keys[i] for i in chosen].count("b") == 5
    assert chosen == stratified_subset(keys, 0.25, seed=1) != stratified_subset(keys, 0.25, 2)
    assert stratified_subset(keys, 1.0, seed=1) == list(range(100))
