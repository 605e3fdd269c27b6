"""Two checkouts, one MLflow server, one Optuna storage; the server dying mid-run.

Two git clones of one tiny project (toy reviews, a tiny random BERT, one tuning trial, one
epoch) share an MLflow tracking server (PostgreSQL backend, artifacts proxied) and an Optuna
storage (PostgreSQL). Both pipelines run at once, one as `dvc repro`, the other as the Prefect
flow (`finetune run --flow`, its own temporary Prefect server and database in the clone's
`.state/prefect`), and each must be recorded on its own: its
pipeline run with its stage runs, its study with its one trial, its own model version. Then
the server is killed before a stage and during one (register, while it logs a model): the
stage retries with backoff, then fails in one line naming the server, leaving no
half-registered version and no alias on a missing version; with the server back, `dvc repro`
completes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    commit,
    free_port,
    make_project,
    project_env,
    run,
    set_params,
    start_server,
    toy_text_frame,
)

from tasks.commands.servers import tracking_server_command

TINY = "models/pretrained/tiny"
MODEL = "reviews-text-classifier"  # register.model_name auto: the data file's stem + task
STAGE_RUNS = {"tokenize", "tune", "train", "evaluate", "register", "report"}  # stages with a run


class Server:
    """The MLflow tracking server of the test: started, killed and started again on one port,
    one backend and one artifact folder."""

    def __init__(self, backend: str, root: Path):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.command, self.env = tracking_server_command(backend, root / "artifacts", self.port)
        self.log = root / "server.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = start_server(self.command, f"{self.uri}/health", self.log, **self.env)

    def kill(self) -> None:
        """SIGKILL the server and its worker processes (a crash, not a shutdown)."""
        parent = psutil.Process(self.process.pid)
        for process in [*parent.children(recursive=True), parent]:
            process.kill()
        self.process.wait()


@pytest.fixture(scope="module")
def stores(postgres, tmp_path_factory, tiny_model_dir):
    """The server (running) and two clones that ran their pipelines at the same time."""
    root = tmp_path_factory.mktemp("shared")
    server = Server(postgres.create_database("mlflow_shared"), root)
    server.start()
    optuna_url = postgres.create_database("optuna_shared")
    base = make_project(root / "base")
    shutil.copytree(tiny_model_dir, base / TINY)
    set_params(
        base,
        **{
            "data.source": {"path": "data/external/reviews.csv"},
            "model.name_or_path": TINY,
            "tokenize.max_length": 32,
            "train.epochs": 1,
            "train.precision": "fp32",
            "tune.n_trials": 1,
            "tune.storage": optuna_url,
            "tracking.uri": server.uri,
        },
    )
    commit(base)
    clones = []
    for seed, name in enumerate(("alice", "bob")):
        clone = root / name
        run(["git", "clone", "-q", str(base), str(clone)], root)
        # The same data, another training seed: shared datasets, different weights.
        frame = toy_text_frame(160, seed=3)
        frame[["text", "label"]].to_csv(clone / "data/external/reviews.csv", index=False)
        set_params(clone, **{"train.seed": seed})
        clones.append(clone)
    alice, bob = clones
    flow = [sys.executable, "-m", "tasks.commands.main", "run", "--flow"]
    # Prefect's logs and artifacts land in bob's .state: the password grep reads them there.
    pipelines = [start(["dvc", "repro"], alice), start(flow, bob, PREFECT_HOME=prefect_home(bob))]
    for clone, process in zip(clones, pipelines, strict=True):
        stdout, stderr = process.communicate(timeout=900)
        assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
        (root / f"{clone.name}.output").write_text(stdout + stderr)  # for the password grep
    yield server, clones, optuna_url
    server.kill()


def start(command: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    environment = {k: v for k, v in project_env().items() if k != "PREFECT_API_URL"}
    return subprocess.Popen(
        command, cwd=cwd, env={**environment, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def prefect_home(clone: Path) -> str:
    return str(clone / ".state" / "prefect")


def report(clone: Path, name: str) -> dict:
    import json

    return json.loads((clone / "reports" / name).read_text())


def registry(uri: str, name: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Versions of ``name`` (number -> tags, status) and its aliases."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {
        v.version: {**v.tags, "status": v.status}
        for v in client.search_model_versions(f"name = '{name}'")
    }
    try:
        aliases = client.get_registered_model(name).aliases
    except mlflow.exceptions.MlflowException:
        aliases = {}
    return versions, {alias: str(v) for alias, v in aliases.items()}


def test_two_pipelines_at_once_are_each_recorded_once(stores):
    import mlflow
    import optuna

    server, clones, optuna_url = stores
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    experiment = client.get_experiment_by_name("finetune")
    parents = client.search_runs(
        [experiment.experiment_id], "tags.`pipeline.stage` = 'pipeline'"
    )  # fmt: skip
    assert len(parents) == 2
    for parent in parents:
        children = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
        stages = sorted(c.data.tags["pipeline.stage"] for c in children)
        assert stages == sorted(STAGE_RUNS), stages  # each stage once, none of the other's
        assert {c.info.status for c in children} == {"FINISHED"}
        assert parent.info.status == "FINISHED"
        assert [d.dataset.name for d in parent.inputs.dataset_inputs] == [
            "train", "validation", "test"
        ]  # fmt: skip

    # Each clone's study (its own training seed: its own configuration) holds its one trial.
    summaries = optuna.get_all_study_summaries(optuna.storages.RDBStorage(optuna_url))
    studies = {s.study_name: s.n_trials for s in summaries}
    names = [report(clone, "best_params.json")["study_name"] for clone in clones]
    assert len(set(names)) == 2 and studies == dict.fromkeys(names, 1), studies

    # Two versions, one per clone, each tagged with its clone's weights.
    versions, aliases = registry(server.uri, MODEL)
    mine = {str(report(c, "registry.json")["version"]): report(c, "registry.json") for c in clones}
    assert set(mine) == set(versions) and len(versions) == 2
    for number, registered in mine.items():
        assert versions[number]["model_md5"] == registered["model_md5"]
    assert set(aliases.values()) <= set(versions)


def test_no_password_in_anything_the_runs_wrote_or_logged(stores, postgres):
    """Issue 31 item 2: the database passwords (the superuser's, and each database role's in
    PGPASSFILE) appear in no file of either clone (reports, params, dvc.lock, .state with the
    Prefect database of bob's flow run: its logs and artifacts, git), in no output of the
    pipelines, in no MLflow param or tag of any run, and in nothing the server wrote
    (artifacts, log); the stores' URLs hold no password at all."""
    import mlflow

    server, clones, optuna_url = stores
    assert ":" not in optuna_url.split("//")[1].split("@")[0]  # postgresql://ROLE@host
    pgpass = Path(os.environ["PGPASSFILE"]).read_text().split()
    secrets = [line.rsplit(":", 1)[1] for line in pgpass]
    secrets.append(postgres.password_file.read_text().strip())
    assert len(secrets) >= 3 and all(len(secret) >= 20 for secret in secrets)
    root = clones[0].parent
    files = [p for clone in clones for p in clone.rglob("*") if p.is_file()]
    files += [p for p in root.glob("*.output")] + [server.log]
    files += [p for p in (root / "artifacts").rglob("*") if p.is_file()]
    client = mlflow.MlflowClient(tracking_uri=server.uri)
    runs = client.search_runs([client.get_experiment_by_name("finetune").experiment_id])
    logged = [(r.info.run_id, str(r.data.params), str(r.data.tags)) for r in runs]
    assert len(files) > 100 and len(runs) >= 2 * len(STAGE_RUNS)
    prefect = b"".join(p.read_bytes() for p in Path(prefect_home(clones[1])).glob("*.db*"))
    assert b"Running stage 'train'" in prefect and b"register-report" in prefect  # log, artifact
    for secret in secrets:
        assert not [p for p in files if secret.encode() in p.read_bytes()], secret[:3]
        assert not [r for r in logged if secret in r[1] + r[2]], secret[:3]


def error_lines(stage: str, stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"{stage}: error:")]


def test_server_down_before_a_stage_fails_at_once_in_one_line(stores):
    server, clones, _ = stores
    server.kill()
    try:
        done = run([sys.executable, "-m", "tasks.evaluate"], clones[0], check=False)
    finally:
        server.start()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = error_lines("evaluate", done.stderr)
    assert f"the MLflow server {server.uri} does not answer" in line, line
    assert line == done.stderr.strip().splitlines()[-1]


def register_logging_a_model(uri: str, after_ms: int, timeout: float = 600) -> bool:
    """Wait until a ``register`` stage run started after ``after_ms`` has begun logging its
    model: MLflow creates the run's logged model (``source_run_id``) before uploading its
    files and creating the version."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("finetune").experiment_id
    query = f"tags.`pipeline.stage` = 'register' and attributes.start_time > {after_ms}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for stage_run in client.search_runs([experiment], query, max_results=1):
            source = f"source_run_id = '{stage_run.info.run_id}'"
            if client.search_logged_models([experiment], source, max_results=1):
                return True
        time.sleep(0.1)
    return False


def test_server_killed_during_register_then_repro_registers_one_version(stores):
    """Killed while register logs a new model (a new register.model_name: only register
    runs): retries, then one line; no version without its weights' tag, no alias on a missing
    version; with the server back, `dvc repro` registers exactly one version."""
    server, clones, _ = stores
    clone, name = clones[0], "killed-mid-register"
    set_params(clone, **{"register.model_name": name})
    started = int(time.time() * 1000)
    process = start(["dvc", "repro"], clone)
    try:
        assert register_logging_a_model(server.uri, started), process.communicate()
        server.kill()
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=300)
        gave_up = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
        server.start()
    print(f"register gave up {gave_up:.1f} s after the server was killed")
    assert process.returncode != 0
    assert "Traceback" not in stderr, stderr[-3000:]
    [line] = error_lines("register", stderr)
    assert f"tracking.uri: the MLflow server {server.uri} stopped answering" in line, line
    versions, aliases = registry(server.uri, name)
    assert all(v.get("model_md5") and v["status"] == "READY" for v in versions.values())
    assert set(aliases.values()) <= set(versions)

    run(["dvc", "repro"], clone)
    versions, aliases = registry(server.uri, name)
    assert list(versions) == [str(report(clone, "registry.json")["version"])], versions
    assert set(aliases.values()) == set(versions)
