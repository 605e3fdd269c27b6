"""The DVC stage graph, run for real by `dvc repro` in a copy of the project."""

from __future__ import annotations

import json
import sys

from conftest import run, set_params, start_point_in


def test_repro_validate_then_noop_then_only_changed_stages(project_copy):
    set_params(project_copy, **{"prepare.max_examples": 300})
    first = run(["dvc", "repro", "validate"], project_copy)
    assert "Running stage 'prepare'" in first.stdout
    assert "Running stage 'validate'" in first.stdout
    summary = json.loads((project_copy / "data/prepared/summary.json").read_text())
    assert summary["source"] == "rotten_tomatoes"
    (source,) = summary["inputs"]  # recorded as in every checkout: no absolute path
    assert source["path"].startswith("data/raw/") and source["path"].endswith(".whl")
    assert {s["examples"] for s in summary["splits"].values()} == {300}
    report = json.loads((project_copy / "reports/validation.json").read_text())
    assert report["success"] is True

    second = run(["dvc", "repro", "validate"], project_copy)
    assert "Running stage" not in second.stdout
    assert "didn't change" in second.stdout
    status = run(["dvc", "status", "validate", "--with-deps"], project_copy).stdout.strip()
    assert status == "Data and pipelines are up to date."

    # A validation threshold reruns only validate.
    set_params(project_copy, **{"validate.max_duplicate_share": 0.2})
    third = run(["dvc", "repro", "validate"], project_copy)
    assert "Running stage 'prepare'" not in third.stdout
    assert "Running stage 'validate'" in third.stdout

    # The split seed reruns prepare and validate, reusing the downloaded wheel.
    set_params(project_copy, **{"prepare.seed": 7})
    fourth = run(["dvc", "repro", "validate"], project_copy)
    assert "Running stage 'prepare'" in fourth.stdout
    assert "Running stage 'validate'" in fourth.stdout
    # prepare's outs are not persistent: the wheel comes from the download cache, no network
    assert ".state/downloads" in fourth.stdout + fourth.stderr
    assert json.loads((project_copy / "data/prepared/summary.json").read_text())["seed"] == 7

    metrics = run(["dvc", "metrics", "show", "--json"], project_copy)
    assert "summary.json" in metrics.stdout


def test_finetune_run_ends_the_parent_run_of_the_stages_it_ran(project_copy, tiny_model_dir):
    """`finetune run` names its execution (PIPELINE_RUN_ID) and ends the MLflow parent run
    when DVC returns: with `--stage tokenize` no stage is the last of dvc.yaml, so before it
    did, the parent stayed RUNNING for ever."""
    import mlflow

    start = start_point_in(project_copy, tiny_model_dir)
    set_params(
        project_copy,
        **{"prepare.max_examples": 60, "tokenize.max_length": 32, "model.name_or_path": str(start)},
    )
    run([sys.executable, "-m", "tasks.commands.main", "run", "--stage", "tokenize"], project_copy)

    client = mlflow.MlflowClient(f"sqlite:///{project_copy / '.state/mlflow/mlflow.db'}")
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = {r.data.tags["pipeline.stage"]: r for r in client.search_runs(ids)}
    assert set(runs) == {"pipeline", "tokenize"}
    parent, tokenize = runs["pipeline"], runs["tokenize"]
    assert parent.info.status == "FINISHED" and tokenize.info.status == "FINISHED"
    execution = parent.data.tags["pipeline.id"]
    assert execution.startswith("run-") and tokenize.data.tags["pipeline.id"] == execution
