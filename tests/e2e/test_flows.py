"""The Prefect flow and deployment, against a real Prefect server on a free loopback port:
the served deployment and a work-pool worker (direct flow calls: test_flows_direct.py).

Runs without overrides (the nightly deployment) go stage by stage in the project's workspace;
runs with overrides are DVC experiments that leave params.yaml and dvc.lock as committed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import (
    ROOT,
    commit,
    experiments,
    project_env,
    run,
    set_params,
    stop_server,
)
from flow_helpers import (
    DEPLOYMENT,
    _artifacts,
    _registry,
    _task_runs,
    _wait_for,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterDeploymentId,
)
from prefect.deployments import run_deployment

from flows.deploy import DEPLOYMENT_NAME, SCHEDULE_SLUG
from flows.pipeline import stage_order

pytest_plugins = ["flow_fixtures"]  # prefect_api, small, project_with


# What the served deployment lets a run override (chosen at deploy time): the keys of SMALL,
# the failing validation threshold, and model.name_or_path by its full name.
ALLOWED = ["prepare.*", "validate.*", "tokenize.*", "train.*", "tune.*", "model.name_or_path"]


@pytest.fixture(scope="module")
def served(prefect_api, served_project, tmp_path_factory):
    """``python -m flows.deploy serve`` running against the test server, its deployment fixed
    on ``served_project`` with the :data:`ALLOWED` overrides; a run started while one runs is
    cancelled (two runs may execute here at once, so the server's limit decides)."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**project_env(), "PREFECT_API_URL": prefect_api}
    options = ["--project", str(served_project), "--limit", "2", "--collision", "cancel"]
    options += [item for key in ALLOWED for item in ("--allow", key)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "serve", *options],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_for(lambda: asyncio.run(_deployment()) is not None, 90, "served deployment")
        yield log_path
    finally:
        stop_server(process)


async def _deployment():
    async with get_client() as client:
        found = await client.read_deployments()
        return next((d for d in found if d.name == DEPLOYMENT_NAME), None)


async def _scheduled_runs(deployment_id):
    async with get_client() as client:
        return await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id]),
                state={"type": {"any_": ["SCHEDULED"]}},
            )
        )


def _rows(artifact) -> list[dict]:
    """A table artifact's rows (the API returns them JSON-encoded)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_deployment_is_scheduled_nightly_with_a_stable_slug(served):
    deployment = asyncio.run(_deployment())
    # Nightly runs refresh the data imports, then train what params.yaml says.
    assert deployment.parameters == {"update_imports": True}
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy == "CANCEL_NEW"
    (schedule,) = deployment.schedules
    assert schedule.slug == SCHEDULE_SLUG
    assert schedule.schedule.cron == "0 2 * * *"
    # The server's scheduler service creates the upcoming runs shortly after deployment.
    _wait_for(lambda: asyncio.run(_scheduled_runs(deployment.id)), 90, "scheduled runs")
    runs = asyncio.run(_scheduled_runs(deployment.id))
    scheduled = [r for r in runs if r.state_name == "Scheduled"]
    assert all(r.expected_start_time.hour == 2 for r in scheduled)


@pytest.fixture(scope="module")
def served_project(tmp_path_factory, project_with) -> Path:
    """One committed project copy shared by the triggered-run tests (its registry carries
    over)."""
    return commit(project_with(tmp_path_factory.mktemp("served") / "project"))


def _mlflow_runs_of(project: Path, flow_run_id) -> dict[str, dict]:
    uri = f"sqlite:///{project / '.state' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(
        experiments, filter_string=f"tags.`prefect.flow_run_id` = '{flow_run_id}'"
    )
    return {r.data.tags["pipeline.stage"]: r for r in runs}


def test_triggered_run_with_overrides_is_an_experiment_with_artifacts_and_an_mlflow_tree(
    served, served_project, small
):
    before = (served_project / "params.yaml").read_bytes()
    flow_run = run_deployment(
        DEPLOYMENT,
        parameters={"overrides": small},
        timeout=600,
    )
    assert flow_run.state_name == "Completed", served.read_text()[-3000:]
    artifacts = asyncio.run(_artifacts(flow_run.id))
    expected = {f"{stage}-report" for stage in stage_order(served_project)}
    assert expected | {"experiment"} <= set(artifacts)
    assert f"DVC experiment `{flow_run.name}`" in artifacts["experiment"].data
    splits = {row["split"]: row for row in _rows(artifacts["prepare-report"])}
    assert splits["train"]["examples"] == 200
    assert all(row["result"] == "pass" for row in _rows(artifacts["validate-report"]))
    assert "version 1" in artifacts["register-report"].data
    # The workspace is as committed; the experiment holds the run.
    assert (served_project / "params.yaml").read_bytes() == before
    assert not (served_project / "dvc.lock").exists()
    assert experiments(served_project)[flow_run.name]["prepare"]["max_examples"] == 200
    # The experiment ran in a copy under .dvc/tmp, yet its MLflow runs and registered model
    # are in the project's own store. One tree per execution: the pipeline run and one child
    # per logging stage.
    runs = _mlflow_runs_of(served_project, flow_run.id)
    assert {"pipeline", "train", "evaluate", "register"} <= set(runs)
    parent = runs["pipeline"].info.run_id
    assert {r.data.tags.get("dvc.experiment") for r in runs.values()} == {flow_run.name}
    assert all(
        r.data.tags["mlflow.parentRunId"] == parent for s, r in runs.items() if s != "pipeline"
    )


def test_validation_failure_fails_the_run_and_keeps_the_registry(served, served_project, small):
    if not _registry(served_project):  # run alone: give it a registry to protect first
        run_deployment(
            DEPLOYMENT,
            parameters={"overrides": small},
            timeout=600,
        )
    registry_before = _registry(served_project)
    bad = {**small, "validate.max_text_length": 40}  # most reviews are longer
    # As an experiment: one task, not retried (bad data), nothing saved.
    flow_run = run_deployment(
        DEPLOYMENT,
        parameters={"overrides": bad},
        timeout=600,
    )
    assert flow_run.state_name == "Failed"
    (experiment,) = asyncio.run(_task_runs(flow_run.id)).values()
    assert experiment.state_name == "Failed" and experiment.run_count == 1
    artifact = asyncio.run(_artifacts(flow_run.id))["experiment"]
    assert artifact.description.endswith("failed") and "validate" in artifact.data
    assert flow_run.name not in experiments(served_project)
    # As the scheduled run would meet it: params.yaml itself holds the bad value.
    committed = (served_project / "params.yaml").read_bytes()
    set_params(served_project, **bad)
    try:
        flow_run = run_deployment(DEPLOYMENT, timeout=600)
    finally:
        (served_project / "params.yaml").write_bytes(committed)
    assert flow_run.state_name == "Failed"
    report = asyncio.run(_artifacts(flow_run.id))["validate-report"]
    assert report.description.startswith("**validate failed.**")
    first = _rows(report)[0]  # failed expectations come first
    assert (first["result"], first["check"]) == ("FAIL", "text_length")
    tasks = asyncio.run(_task_runs(flow_run.id))
    assert tasks["validate"].state_name == "Failed"
    assert tasks["validate"].run_count == 1  # bad data is not retried
    later_stages = stage_order(served_project)[2:]
    assert not set(later_stages) & set(tasks)
    assert registry_before and _registry(served_project) == registry_before


def test_work_pool_worker_runs_from_a_clone_and_the_dvc_remote(
    prefect_api, tmp_path, small, project_with
):
    """Past one machine: a worker started in an unrelated directory clones the repository,
    pulls what the DVC remote holds (those stages are skipped, not re-run), runs the rest and
    pushes its outputs; the repository it was cloned from is untouched."""
    api = {"PREFECT_API_URL": prefect_api}
    origin = project_with(tmp_path / "origin")
    set_params(origin, **small)
    (origin / ".gitignore").write_text(".state/\n")
    remote = tmp_path / "dvc-remote"  # the team's shared storage (S3 in real life)
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], origin)
    run(["dvc", "repro", "validate"], origin)  # prepare + validate, then shared
    run(["dvc", "push"], origin)
    commit(origin)  # code, params, dvc.lock, the tiny start-point model
    branch = run(["git", "branch", "--show-current"], origin).stdout.strip()
    pushed = {path for path in remote.rglob("*") if path.is_file()}

    run(["prefect", "work-pool", "create", "test-pool", "--type", "process"], ROOT, **api)
    deploy = [sys.executable, "-m", "flows.deploy", "pool", "--pool", "test-pool"]
    run([*deploy, "--name", "on-pool", "--repo", str(origin), "--branch", branch], ROOT, **api)
    machine = tmp_path / "machine-2"  # the worker's own directory: no checkout there
    machine.mkdir()
    worker = start_worker(machine, api, tmp_path / "worker.log")
    try:
        flow_run = run_deployment(
            "training-pipeline/on-pool",
            parameters={"stages": ["tokenize"]},
            job_variables={"working_dir": str(machine)},
            timeout=600,
        )
    finally:
        stop_server(worker)
    assert flow_run.state_name == "Completed", (tmp_path / "worker.log").read_text()[-3000:]
    assert flow_run.parameters["sync_remote_data"] is True  # the deployment's default

    (clone,) = {path.parent for path in machine.rglob("dvc.yaml")}
    assert (clone / "data/tokenized").is_dir()
    status = run(["dvc", "status", "tokenize", "--with-deps"], clone).stdout.strip()
    assert status == "Data and pipelines are up to date."
    # Restored stages were skipped: only tokenize published a stage artifact.
    assert set(asyncio.run(_artifacts(flow_run.id))) == {"tokenize-report", "nightly-summary"}
    # Its outputs went to the remote; the origin's workspace is as committed.
    assert {path for path in remote.rglob("*") if path.is_file()} > pushed
    assert not run(["git", "status", "--porcelain"], origin).stdout.strip()
    assert not (origin / "data/tokenized").exists()


def start_worker(directory: Path, api: dict, log_path: Path) -> subprocess.Popen:
    """``prefect worker start --pool test-pool`` running in ``directory``."""
    with log_path.open("w") as log:
        return subprocess.Popen(
            ["prefect", "worker", "start", "--pool", "test-pool"],
            cwd=directory,
            env={**project_env(), **api},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _flow_run(flow_run_id):
    async with get_client() as client:
        return await client.read_flow_run(flow_run_id)


def test_runs_choose_neither_the_project_nor_keys_the_deployment_does_not_allow(
    served, served_project
):
    """Anyone who reaches the API can create runs: the project and the allowed keys were
    fixed at deploy time, so these runs are refused before any stage runs."""
    experiments_before = experiments(served_project)  # other tests share the served project
    flow_run = run_deployment(
        DEPLOYMENT, parameters={"project_dir": "/somewhere/else"}, timeout=120
    )
    # Prefect's engine refuses parameters the flow does not take (the run crashes unstarted).
    assert flow_run.state_name == "Crashed"
    refused = "'project_dir']"  # SignatureMismatchError: "... provided with parameters [...]"
    _wait_for(lambda: refused in served.read_text(), 30, "the runner's log of the refusal")
    assert asyncio.run(_task_runs(flow_run.id)) == {}
    sensitive = {
        "tracking.uri": "http://127.0.0.1:9/",  # no pattern covers tracking.*
        "tune.storage": "sqlite:///elsewhere.db",  # `tune.*` is allowed, tune.storage is not
        "train.epochs": 1,  # allowed
    }
    for parameters, named in [
        ({"overrides": sensitive}, "tracking.uri, tune.storage (allowed:"),
        ({"preset": "conll2003"}, "preset=conll2003 (allowed:"),
    ]:
        flow_run = run_deployment(DEPLOYMENT, parameters=parameters, timeout=120)
        assert flow_run.state_name == "Failed", served.read_text()[-3000:]
        assert f"deployment '{DEPLOYMENT_NAME}' does not allow {named}" in flow_run.state.message
        assert asyncio.run(_task_runs(flow_run.id)) == {}  # no stage ran
    assert "train.epochs" not in flow_run.state.message
    assert experiments(served_project) == experiments_before  # no refused run left one


def test_a_second_run_is_cancelled_while_one_runs(served, small):
    """The deployment's concurrency limit (1, collision strategy cancel): a manual run
    started while another runs never interleaves its stages with it."""
    # A seed no other test uses: DVC's run cache cannot finish the first run at once.
    overrides = {**small, "prepare.seed": 4242}
    first = run_deployment(
        DEPLOYMENT, parameters={"overrides": overrides, "stages": ["validate"]}, timeout=0
    )
    _wait_for(
        lambda: asyncio.run(_flow_run(first.id)).state_type.value == "RUNNING", 90, "first run"
    )
    second = run_deployment(DEPLOYMENT, parameters={"stages": ["prepare"]}, timeout=90)
    assert second.state_name == "Cancelled", second.state
    assert asyncio.run(_task_runs(second.id)) == {}
    _wait_for(lambda: asyncio.run(_flow_run(first.id)).state.is_final(), 300, "first run end")
    assert asyncio.run(_flow_run(first.id)).state_name == "Completed", served.read_text()[-3000:]
