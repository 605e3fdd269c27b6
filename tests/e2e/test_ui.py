"""The UIs the README sends users to, opened in headless Chromium as a user would.

The MLflow UI runs on a store written by the project's tracking code (two pipeline
executions, one failed, and a registered model with its champion); the Prefect server holds
the nightly deployment. Both are started by tasks.commands.ui (what ``make ui`` and ``make
prefect-server`` run) on free 127.0.0.1 ports. Assertions are on page text; screenshots go
to ``.state/tmp/ui-screenshots`` as artifacts.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, find_chromium, new_profile
from conftest import ROOT, project_env

from tasks.commands import ui
from tasks.core import tracking
from tasks.core.config import load_params
from tasks.core.errors import StageError

SCREENSHOTS = ROOT / ".state" / "tmp" / "ui-screenshots"
MODEL = "toy-sentiment"
PAGE_TIMEOUT = 90  # seconds; pages render in 5-40 s on a loaded 2-core machine


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("chromium is not installed and could not be (apt-get install chromium)")
    profile = new_profile()
    instance = Browser(binary, profile)
    yield instance
    instance.close()
    shutil.rmtree(profile, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], health: str, log: Path) -> Iterator[None]:
    """A server process, ready once ``health`` answers; stopped (by its pid) at the end."""
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{command[:3]} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def write_store(project: Path, state: Path, monkeypatch) -> str:
    """Two executions through the stage runs (the second fails in train) and a registered
    model whose version 1 is champion; return the experiment id."""
    import mlflow

    params = load_params(project / "params.yaml")
    summary = {"source": "rotten_tomatoes", "task": "text_classification"}
    (project / "data" / "prepared").mkdir(parents=True)
    (project / "data" / "prepared" / "summary.json").write_text(json.dumps(summary))
    train_run = None
    for execution, fail_at in (("exec-1", None), ("exec-2", "train")):
        monkeypatch.setenv("PIPELINE_RUN_ID", execution)
        with contextlib.suppress(RuntimeError):
            for stage in ("tokenize", "train", "evaluate", "register"):
                with tracking.stage_run(params, stage, state, project) as run:
                    if stage == "train":
                        for step in range(1, 6):
                            mlflow.log_metric("train_loss", 1.0 / step, step=step)
                        mlflow.log_text("weights", "model/weights.txt")
                        train_run = train_run or run.info.run_id
                    if stage == fail_at:
                        raise RuntimeError("disk full")
    client = mlflow.MlflowClient()
    client.create_registered_model(MODEL, description="Sentiment of movie reviews (toy).")
    version = client.create_model_version(MODEL, f"runs:/{train_run}/model", run_id=train_run)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    return client.get_run(train_run).info.experiment_id


def test_mlflow_ui_shows_the_training_runs_and_the_champion(browser, tmp_path, monkeypatch):
    project, state = tmp_path / "project", tmp_path / "state"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, project / name)
    experiment_id = write_store(project, state, monkeypatch)
    port = free_port()
    command, env = ui.mlflow_server(port, state_dir=state)
    base = f"http://127.0.0.1:{port}"
    with server(command, env, f"{base}/health", tmp_path / "mlflow.log"):
        # The URL `finetune ui mlflow` prints: the runs list, not the traces overview.
        runs = browser.page(
            ui.experiment_url(base, experiment_id),
            ["rotten_tomatoes text_classification", "matching runs"],
            PAGE_TIMEOUT,
            SCREENSHOTS / "mlflow-runs.png",
        )
        model = browser.page(
            f"{base}/#/models/{MODEL}",
            ["champion", "Version 1"],
            PAGE_TIMEOUT,
            SCREENSHOTS / "mlflow-model.png",
        )
    names = [line for line in runs.splitlines() if "rotten_tomatoes text_classification" in line]
    assert len(names) == 2, runs  # both executions' parent runs, by their readable names
    assert "pipeline dvc-" not in runs and "exec-1" not in runs
    assert "Run Name" in runs and "Duration" in runs  # the runs table
    assert "Usage\nQuality" not in runs  # not the GenAI overview's tabs
    assert "Something went wrong" not in runs
    assert "champion" in model and "Sentiment of movie reviews" in model, model


def test_prefect_ui_calls_its_own_port_and_shows_the_deployment(browser, tmp_path):
    port = free_port()
    assert port != 4200
    command, env = ui.prefect_server(port)
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    api = f"http://127.0.0.1:{port}/api"
    with server(command, env, f"{api}/health", tmp_path / "prefect.log"):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings") as response:
            assert json.load(response)["api_url"] == api
        register = "from flows.deploy import nightly_deployment; nightly_deployment().apply()"
        subprocess.run(
            [sys.executable, "-c", register],
            cwd=ROOT,
            env={**project_env(), **env, "PREFECT_API_URL": api},
            check=True,
            capture_output=True,
        )
        text = browser.page(
            f"http://127.0.0.1:{port}/deployments",
            ["nightly-retrain"],
            PAGE_TIMEOUT,
            SCREENSHOTS / "prefect-deployments.png",
        )
    assert "nightly-retrain" in text and "training-pipeline" in text, text
    assert "Something went wrong" not in text and "Can't connect" not in text, text


def test_optuna_dashboard_lists_the_tuning_study_and_its_trials(browser, tmp_path):
    """A study in the storage the tune stage uses (the project's SQLite default), opened by
    `finetune ui optuna` as a user would."""
    import optuna

    from tasks.tuning.storage import storage_spec

    state = tmp_path / "state"
    with pytest.raises(StageError, match="no study yet"):
        ui.optuna_dashboard(free_port(), ROOT / "params.yaml", state)
    storage = storage_spec(load_params(ROOT / "params.yaml"), state)
    (state / "optuna").mkdir(parents=True)
    study = optuna.create_study(
        study_name="finetune-0123abcd", storage=storage, direction="maximize"
    )
    study.optimize(lambda trial: trial.suggest_float("learning_rate", 1e-5, 1e-3), n_trials=3)
    port = free_port()
    command, env = ui.optuna_dashboard(port, ROOT / "params.yaml", state)
    # Not gunicorn (its control socket would go to ~/.gunicorn): the dashboard's own server.
    assert command[1:] == [
        storage,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--server",
        "wsgiref",
    ]
    base = f"http://127.0.0.1:{port}"
    with server(command, env, f"{base}/api/studies", tmp_path / "optuna.log"):
        studies = browser.page(
            f"{base}/dashboard", ["finetune-0123abcd"], PAGE_TIMEOUT, SCREENSHOTS / "optuna.png"
        )
        trials = browser.page(
            f"{base}/dashboard/studies/1/trials",
            ["Trial 2"],
            PAGE_TIMEOUT,
            SCREENSHOTS / "optuna-trials.png",
        )
    assert "finetune-0123abcd" in studies, studies
    assert all(f"Trial {n}" in trials for n in range(3)), trials
    assert "learning_rate" in trials, trials
    log = (tmp_path / "optuna.log").read_text()
    assert "gunicorn" not in log and "Control socket" not in log, log


def test_mlflow_ui_shows_the_test_scores_on_the_logged_model(browser, tmp_path):
    """Issue 33 item 2: register's model metrics (tracking.log_model_metrics) are what the
    logged model's page lists, each linked to the test split by name and digest."""
    import mlflow

    state = tmp_path / "state"
    store = tracking.default_tracking_uri(state)
    (state / "mlflow").mkdir(parents=True)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "test.parquet").write_bytes(b"test split")
    mlflow.set_tracking_uri(store)  # the stores tracking.use_store sets (reset after tests)
    mlflow.set_registry_uri(store)
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("finetune")
    run = client.create_run(experiment)
    with mlflow.start_run(run_id=run.info.run_id):  # register logs into its active run
        model = mlflow.initialize_logged_model(name="model")
        mlflow.finalize_logged_model(model.model_id, "READY")
        client.create_registered_model(MODEL)
        version = client.create_model_version(
            MODEL, f"models:/{model.model_id}", run_id=run.info.run_id, model_id=model.model_id
        )
        scores = {"accuracy": 0.8765, "f1_macro": 0.8642, "samples": 1066}
        tracking.log_model_metrics(client, MODEL, version.version, scores, prepared, "d1g35t")
    port = free_port()
    command, env = ui.mlflow_server(port, store)
    base = f"http://127.0.0.1:{port}"
    with server(command, env, f"{base}/health", tmp_path / "mlflow.log"):
        text = browser.page(
            f"{base}/#/experiments/{experiment}/models/{model.model_id}",
            ["test_accuracy", "0.8765"],
            PAGE_TIMEOUT,
            SCREENSHOTS / "mlflow-model-metrics.png",
        )
    assert "Metrics (2)" in text, text  # the scores, not the sample count
    for name, value in (("test_accuracy", "0.8765"), ("test_f1_macro", "0.8642")):
        assert f"{name}\ntest (#d1g35t)" in text and value in text, text
