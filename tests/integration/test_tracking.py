"""Live tracking: stage runs open when a stage starts and end FINISHED or FAILED with the
error; the pipeline's parent run spans the whole execution and says how it ended."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from tasks.core import tracking
from tasks.core.config import load_params

STAGES = ["tokenize", "tune", "train", "evaluate", "register", "report"]


def tracked_project(tmp_path: Path) -> tuple[Path, Path]:
    """A directory with the project's dvc.yaml and params.yaml, and its own state dir."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy2(ROOT / name, project / name)
    return project, tmp_path / "state"


def log_execution(project: Path, state: Path, execution: str, fail_at: str | None = None):
    """Run the stage runs of one execution as the stages do; ``fail_at`` raises inside."""
    import mlflow

    params = load_params(project / "params.yaml")
    seen = {}
    for stage in STAGES:
        with tracking.stage_run(params, stage, state, project) as run:
            client = mlflow.MlflowClient()
            parent = client.get_run(run.data.tags["mlflow.parentRunId"])
            seen[stage] = (client.get_run(run.info.run_id).info.status, parent.info.status)
            if stage == "train":
                for step in range(1, 4):
                    mlflow.log_metric("train_loss", 1.0 / step, step=step)
            if stage == "evaluate":
                tracking.log_to_parent({"f1_macro": 0.75, "per_class": {"pos": 0.5}}, "test_")
            if stage == fail_at:
                raise RuntimeError(f"{stage} blew up: out of disk")
    return seen


def runs_of(execution: str) -> dict[str, object]:
    import mlflow

    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{tracking.PIPELINE_TAG}` = '{execution}'",
        output_format="list",
    )
    return {run.data.tags[tracking.STAGE_TAG]: run for run in runs}


def test_runs_are_live_and_the_parent_spans_the_execution(tmp_path, monkeypatch):
    project, state = tracked_project(tmp_path)
    monkeypatch.setenv("PIPELINE_RUN_ID", "exec-ok")
    seen = log_execution(project, state, "exec-ok")
    # Every stage run and the parent are RUNNING while the stage works.
    assert set(seen.values()) == {("RUNNING", "RUNNING")}, seen
    runs = runs_of("exec-ok")
    assert set(runs) == {"pipeline", *STAGES}
    assert {runs[s].info.status for s in STAGES} == {"FINISHED"}
    parent = runs["pipeline"]
    assert parent.info.status == "FINISHED"  # ended by the last stage of dvc.yaml
    # The headline metrics are rolled up onto the parent.
    assert parent.data.metrics["test_f1_macro"] == 0.75
    assert parent.data.metrics["test_per_class.pos"] == 0.5
    # Its duration covers every stage (it was not created already finished).
    assert parent.info.start_time <= runs["tokenize"].info.start_time
    assert parent.info.end_time >= runs["register"].info.end_time
    # A readable name: data, task, date and time, commit (not the execution id).
    assert "exec-ok" not in parent.info.run_name
    commit = parent.data.tags["git.commit"]
    assert parent.info.run_name.split()[-1] == commit[:7]
    # The device is a model stage's tag: the stage that opens the parent needs no torch for it.
    assert "device" not in parent.data.tags and "device" not in runs["tokenize"].data.tags
    assert all("device" in runs[s].data.tags for s in tracking.MODEL_STAGES if s in STAGES)
    import mlflow

    experiment = mlflow.get_experiment(parent.info.experiment_id)
    assert experiment.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND


def test_a_failed_stage_fails_its_run_and_the_parent_with_the_error(tmp_path, monkeypatch):
    project, state = tracked_project(tmp_path)
    monkeypatch.setenv("PIPELINE_RUN_ID", "exec-bad")
    with pytest.raises(RuntimeError, match="out of disk"):
        log_execution(project, state, "exec-bad", fail_at="train")
    runs = runs_of("exec-bad")
    assert set(runs) == {"pipeline", "tokenize", "tune", "train"}  # later stages never ran
    train, parent = runs["train"], runs["pipeline"]
    assert train.info.status == "FAILED"
    assert train.data.tags[tracking.ERROR_TAG] == "RuntimeError: train blew up: out of disk"
    assert train.data.metrics["train_loss"] == pytest.approx(1 / 3)  # streamed before failing
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.ERROR_TAG].startswith("train: RuntimeError: train blew up")
    assert runs["tokenize"].info.status == "FINISHED"

    # A retry of the stage in the same execution reopens the parent; the flow's end closes it.
    params = load_params(project / "params.yaml")
    with tracking.stage_run(params, "train", state, project):
        assert runs_of("exec-bad")["pipeline"].info.status == "RUNNING"
    assert tracking.end_pipeline(params, "exec-bad", state_dir=state) == parent.info.run_id
    assert runs_of("exec-bad")["pipeline"].info.status == "FINISHED"


def test_user_label_names_become_valid_metric_names_without_losing_one(tmp_path, monkeypatch):
    """Label names are user data: ``<pos>`` or ``B-ORG?`` must not make MLflow reject the
    batch, and two labels that sanitise alike stay two metrics."""
    import mlflow

    project, state = tracked_project(tmp_path)
    monkeypatch.setenv("PIPELINE_RUN_ID", "exec-labels")
    params = load_params(project / "params.yaml")
    counts = {"labels": {"<pos>": 3, "_pos_": 4, "B-ORG?": 5, "neg": 6}}
    with tracking.stage_run(params, "tokenize", state, project) as run:
        tracking.log_numbers(counts)
        tracking.log_to_parent(counts, "test_")
    metrics = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics
    assert sorted(metrics.values()) == [3.0, 4.0, 5.0, 6.0]
    assert metrics["labels._pos_"] == 4.0 and metrics["labels.neg"] == 6.0
    assert metrics["labels.B-ORG_"] == 5.0
    assert tracking.mlflow_names({"a<b": 1}) == {"a_b": 1}


def test_train_and_tune_runs_sample_system_metrics(tmp_path, monkeypatch):
    """MLflow system metrics (CPU, memory; GPU when present) every
    tracking.system_metrics_interval seconds on the runs where the compute is, none on the
    others."""
    import time

    import mlflow
    import yaml

    project, state = tracked_project(tmp_path)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["tracking"]["system_metrics_interval"] = 0.5
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.setenv("PIPELINE_RUN_ID", "exec-system")
    params = load_params(project / "params.yaml")
    for stage in ("tokenize", "train"):
        with tracking.stage_run(params, stage, state, project):
            time.sleep(2.5)  # the sampler's thread logs a sample every 0.5 s
    runs = runs_of("exec-system")
    client = mlflow.MlflowClient()
    samples = client.get_metric_history(
        runs["train"].info.run_id, "system/cpu_utilization_percentage"
    )
    assert len(samples) >= 2 and all(0 <= s.value <= 100 * 64 for s in samples)
    assert "system/system_memory_usage_megabytes" in runs["train"].data.metrics
    assert not [m for m in runs["tokenize"].data.metrics if m.startswith("system/")]


def test_only_model_stages_find_the_device_and_others_never_import_torch():
    """Lineage tags name the versions from package metadata; the device (which needs torch)
    only where a stage runs a model, so validate, tokenize and report start without torch."""
    script = (
        "import sys, json; from tasks.core import tracking; "
        "tags = tracking.lineage_tags(device=False); "
        "print(json.dumps(['torch' in sys.modules, sorted(tags)]))"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    torch_loaded, keys = json.loads(done.stdout.splitlines()[-1])
    assert not torch_loaded and "device" not in keys and "torch.version" in keys
    with_device = tracking.lineage_tags(ROOT)
    assert with_device["device"].startswith(("cpu: ", "cuda: "))
    assert set(tracking.MODEL_STAGES) == {"tune", "train", "evaluate", "register"}


def test_live_metrics_without_a_run_never_import_mlflow_inside_the_training_loop():
    """Tune trials, benchmarks and tests train without an MLflow run: the live-metrics
    callback must then cost nothing, not MLflow's import (about 1 s) at the first log."""
    script = (
        "import sys, types; from tasks.train import LiveMetrics; "
        "state = types.SimpleNamespace(global_step=10); "
        "LiveMetrics().on_log(None, state, None, logs={'loss': 1.0, 'learning_rate': 1e-5}); "
        "print('mlflow' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "False"
