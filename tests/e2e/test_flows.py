"""The Prefect flow and deployment, against a real Prefect server on a free loopback port.

Runs without overrides (the nightly deployment) go stage by stage in the project's workspace;
runs with overrides are DVC experiments that leave params.yaml and dvc.lock as committed.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import ClassVar

import mlflow
import psutil
import pytest
import yaml
from conftest import (
    ROOT,
    commit,
    experiments,
    make_project,
    project_env,
    run,
    set_params,
    stop_server,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterDeploymentId,
)
from prefect.deployments import run_deployment
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings
from prepare_data import TEXT_COLUMNS

from flows.deploy import DEPLOYMENT_NAME, SCHEDULE_SLUG
from flows.notify import WEBHOOK_ENV
from flows.pipeline import stage_order, training_pipeline
from flows.settings import DIRECT, SETTINGS_ENV, DeploymentSettings, settings_env

DEPLOYMENT = f"training-pipeline/{DEPLOYMENT_NAME}"


TINY = "models/pretrained/tiny"  # start-point models must live in models/pretrained/
SMALL = {
    "prepare.max_examples": 200,
    "model.name_or_path": TINY,
    "tokenize.max_length": 64,
    "train.epochs": 1,
    "tune.n_trials": 1,
    "tune.timeout": None,
}


@pytest.fixture(scope="module")
def small() -> dict:
    """Overrides that make a whole pipeline run take seconds: a few hundred reviews and a
    tiny random BERT (a project needs it in models/pretrained/tiny: :func:`project_with`)."""
    return dict(SMALL)


@pytest.fixture(scope="module")
def project_with(tiny_model_dir):
    """``project_with(directory)``: a fresh project copy holding the tiny model."""

    def make(directory: Path) -> Path:
        project = make_project(directory)
        shutil.copytree(tiny_model_dir, project / TINY)
        return project

    return make


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real ``prefect server`` on 127.0.0.1 with its own home; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {**project_env(), "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    port = url.split(":")[2].split("/")[0]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(lambda: _healthy(url), 90, "prefect server")
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            APILogHandler().flush()  # ship this process's flow logs before the server stops
    finally:
        stop_server(server)


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


async def _artifacts(flow_run_id) -> dict:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return {a.key: a for a in found}


def _rows(artifact) -> list[dict]:
    """A table artifact's rows (the API returns them JSON-encoded)."""
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


async def _task_runs(flow_run_id) -> dict:
    async with get_client() as client:
        found = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})
        )
        return {t.name: t for t in found}


def training_pipeline_in(project: Path, monkeypatch, **settings):
    """``training_pipeline`` for direct calls in this process, on ``project`` (what ``deploy
    serve --project`` fixes for a deployment); ``settings``: other DeploymentSettings."""
    fixed = DeploymentSettings(project=str(project), **{"allow": None, **settings})
    monkeypatch.setenv(SETTINGS_ENV, settings_env({DIRECT: fixed})[SETTINGS_ENV])
    return training_pipeline


def _locked_params(project: Path, stage: str) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"][stage]["params"]


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


def _registry(project: Path) -> dict:
    """Every registered version and alias in the project's own MLflow store."""
    uri = f"sqlite:///{project / '.state' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            versions[(model.name, version.version)] = sorted(version.aliases)
    return versions


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


def test_flow_and_dvc_repro_leave_identical_locks(
    prefect_api, tmp_path, small, project_with, monkeypatch
):
    by_dvc = project_with(tmp_path / "by-dvc")
    by_flow = project_with(tmp_path / "by-flow")
    for project in (by_dvc, by_flow):
        set_params(project, **small)
    run(["dvc", "repro"], by_dvc)
    results = training_pipeline_in(by_flow, monkeypatch)()
    assert [r["stage"] for r in results] == stage_order(by_flow)
    assert all(r["ran"] for r in results)
    assert _lock_without_timings(by_flow) == _lock_without_timings(by_dvc)
    assert run(["dvc", "status"], by_flow).stdout.strip() == "Data and pipelines are up to date."
    # After `dvc repro`, the flow has nothing to do.
    again = training_pipeline_in(by_dvc, monkeypatch)()
    assert not any(r["ran"] for r in again)


# The contract (dvc.yaml): an output that another stage depends on holds no timings, paths
# or run ids, so its hash must match between any two runs. Only outputs nothing depends on
# (speeds, wall times, trial durations, the registry decision with its run id) may differ.
# The report stage is the exception that proves it: it shows everything (timings and run ids
# too), and since nothing depends on its page, such a change re-runs only itself.
def _varying(path: str) -> bool:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    consumed = {
        d
        for name, stage in stages.items()
        if name != "report"
        for d in stage.get("deps", [])
        if isinstance(d, str)
    }
    return not any(path == dep or path.startswith(dep + "/") for dep in consumed)


def _lock_without_timings(project) -> dict:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for entry in stage.get("outs", []) + stage.get("deps", []):
            if _varying(entry["path"]):
                entry.pop("md5", None), entry.pop("size", None)
    return lock


def test_overrides_never_change_what_the_next_plain_run_trains(prefect_api, tmp_path, monkeypatch):
    """An ad-hoc run (prepare.seed 7) is a DVC experiment; the plain run after it (what the
    nightly deployment does) reproduces the committed params. Up to validate, for speed."""
    project = make_project(tmp_path / "project")
    set_params(project, **{"prepare.max_examples": 200})
    commit(project)
    before = (project / "params.yaml").read_bytes()
    pipeline = training_pipeline_in(project, monkeypatch)
    state = pipeline(
        overrides={"prepare.seed": 7},
        stages=["validate"],
        experiment="seed-7",
        return_state=True,
    )
    (record,) = state.result()
    assert record["experiment"] == "seed-7" and record["ran"] == ["prepare", "validate"]
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists()
    artifacts = asyncio.run(_artifacts(state.state_details.flow_run_id))
    assert {"experiment", "prepare-report", "validate-report"} <= set(artifacts)
    assert "(seed 7)" in artifacts["prepare-report"].description

    results = pipeline(stages=["validate"])
    assert [(r["stage"], r["ran"]) for r in results] == [("prepare", True), ("validate", True)]
    assert (project / "params.yaml").read_bytes() == before
    committed = yaml.safe_load(before)
    assert _locked_params(project, "prepare")["params.yaml"]["prepare"] == committed["prepare"]
    assert experiments(project)["seed-7"]["prepare"]["seed"] == 7


def test_a_bad_override_fails_before_any_work(prefect_api, tmp_path, monkeypatch):
    project = commit(make_project(tmp_path / "project"))
    before = (project / "params.yaml").read_bytes()
    pipeline = training_pipeline_in(project, monkeypatch)
    with pytest.raises(ValueError, match=r"prepare\.sed: unknown key \(did you mean 'seed'"):
        pipeline(overrides={"prepare.sed": 7})
    with pytest.raises(ValueError, match=r"unknown stage\(s\) trian"):
        pipeline(stages=["trian"])
    with pytest.raises(ValueError, match="'a b' cannot name an experiment"):
        pipeline(overrides={"prepare.seed": 7}, experiment="a b")
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists() and not experiments(project)
    assert not (project / "data" / "prepared" / "train.parquet").exists()


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


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook on 127.0.0.1 that keeps every JSON body it is sent."""

    received: ClassVar[list[dict]] = []

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self.received.append(json.loads(self.rfile.read(length)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """(URL, bodies received) of a webhook receiver on a free 127.0.0.1 port."""
    receiver = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{receiver.server_port}/hook", _Receiver.received
    finally:
        receiver.shutdown()


def test_a_stage_past_its_timeout_is_stopped_and_the_failure_posted(
    prefect_api, tmp_path, monkeypatch, webhook
):
    """prepare gets 1 s (it needs several): the task times out, is not retried, its dvc
    process is stopped (no stage output appears later), and the webhook is told which stage
    failed, with a link to the flow run."""
    url, received = webhook
    project = make_project(tmp_path / "project")
    set_params(project, **{"prepare.max_examples": 200})
    monkeypatch.setenv(WEBHOOK_ENV, url)
    pipeline = training_pipeline_in(project, monkeypatch, timeouts={"prepare": 1})
    state = pipeline(stages=["prepare"], return_state=True)
    assert state.is_failed()
    flow_run_id = state.state_details.flow_run_id
    prepare = asyncio.run(_task_runs(flow_run_id))["prepare"]
    assert (prepare.state_name, prepare.run_count) == ("TimedOut", 1)
    time.sleep(5)  # what the stage would have written by now, had it gone on
    assert not (project / "data" / "prepared").exists()
    assert not [p for p in psutil.process_iter(["cwd"]) if p.info["cwd"] == str(project)]
    (body,) = received
    assert body["failed_stages"] == ["prepare"]
    assert "failed at stage 'prepare'" in body["text"]
    assert body["flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    assert body["flow_run_url"] in body["text"]
    assert body["flow_run_url"].startswith(prefect_api.removesuffix("/api"))


def _reviews(path: Path, n: int) -> None:
    """``n`` reviews, both labels in every movie (ten reviews each), as an upstream CSV."""
    rows = ["review,sentiment,movie"]
    for i in range(n):
        word, label = ("great", "pos") if i % 2 else ("dull", "neg")
        rows.append(f'"review {i}: a {word} film",{label},movie{i // 10}')
    path.write_text("\n".join(rows) + "\n")


def test_the_nightly_retrains_only_when_the_imported_data_changed(
    prefect_api, tmp_path, project_with, small, monkeypatch
):
    """User data imported with `dvc import-url` from a folder upstream: a nightly run with
    nothing new skips every stage and says so; after rows are added upstream, the next one
    updates the import, retrains, registers one new version, and its summary artifact gives
    the examples per split before and after, the gate's decision and the files to commit."""
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    _reviews(upstream / "reviews.csv", 150)
    project = project_with(tmp_path / "project")
    data = {**TEXT_COLUMNS, "source": {"path": "data/external/reviews.csv"}}
    data["group_column"] = "movie"
    set_params(project, **{k: v for k, v in small.items() if k != "prepare.max_examples"})
    set_params(project, **{f"data.{key}": value for key, value in data.items()})
    set_params(project, **{"register.min_score": 0.0})  # version 1 becomes the champion
    run(["dvc", "import-url", str(upstream / "reviews.csv"), "data/external/reviews.csv"], project)
    run(["dvc", "repro", "register"], project)  # all but the HTML report, for speed
    commit(project)
    pipeline = training_pipeline_in(project, monkeypatch)

    state = pipeline(update_imports=True, stages=["register"], return_state=True)
    assert not any(record["ran"] for record in state.result())
    summary = asyncio.run(_artifacts(state.state_details.flow_run_id))["nightly-summary"]
    assert summary.data.startswith("## Nightly: no new data")
    assert "every stage was up to date" in summary.data and "Nothing to commit" in summary.data

    before = json.loads((project / "data/prepared/summary.json").read_text())["splits"]
    _reviews(upstream / "reviews.csv", 190)  # the same 150 rows and 40 new ones
    state = pipeline(update_imports=True, stages=["register"], return_state=True)
    assert all(record["ran"] for record in state.result())
    summary = asyncio.run(_artifacts(state.state_details.flow_run_id))["nightly-summary"].data
    assert summary.startswith("## Nightly: new data")
    after = json.loads((project / "data/prepared/summary.json").read_text())["splits"]
    assert (
        sum(s["examples"] for s in after.values()) - 150
        == 40
        == sum(s["examples"] - before[name]["examples"] for name, s in after.items())
    )
    for name, split in after.items():
        old, new = before[name]["examples"], split["examples"]
        assert f"| {name} | {old} | {new} | {new - old:+d} |" in summary
    registry = json.loads((project / "reports/registry.json").read_text())
    assert len(_registry(project)) == 2 and registry["version"] == 2
    assert f"version 2 scored {registry['score']:.4f}" in summary
    assert f"champion version 1 {registry['champion_before']['score']:.4f}" in summary
    assert f"**{registry['decision']}**" in summary
    assert "git add data/external/reviews.csv.dvc dvc.lock && git commit" in summary
