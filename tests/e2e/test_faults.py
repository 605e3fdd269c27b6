"""The fault matrix: a killed stage, two runs at once, a full disk lose nothing.

One tiny project (a few hundred toy reviews, a tiny random BERT, no tuning) runs the whole
pipeline once; every case below then hurts that project and checks that the next
``dvc repro`` ends with exactly the first run's outputs (dvc.lock hashes) and registry
(one version for the model, aliases on existing versions). Train and tune have their own
SIGKILL tests (test_train.py, test_tune.py).
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import commit, make_project, project_env, run, set_params, toy_text_frame

TINY = "models/pretrained/tiny"
PARAMS = {
    "data.source": {"path": "data/external/reviews.csv"},
    "model.name_or_path": TINY,
    "tokenize.max_length": 32,
    "train.epochs": 1,
    "train.precision": "fp32",
    "tune.enabled": False,
}
# Outputs whose content holds timings (or run ids): the same run twice differs there.
TIMED = (
    "reports/inference_speed.json",
    "reports/train_metrics.json",
    "reports/registry.json",
    "reports/report.html",
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir) -> Path:
    """A project that ran the whole pipeline once."""
    import shutil

    project = make_project(tmp_path_factory.mktemp("faults") / "project")
    shutil.copytree(tiny_model_dir, project / TINY)
    frame = toy_text_frame(300, seed=3)
    frame[["text", "label"]].to_csv(project / "data/external/reviews.csv", index=False)
    set_params(project, **PARAMS)
    run(["dvc", "repro"], project)
    return project


def outputs(project: Path) -> dict[str, str]:
    """Every output's hash in dvc.lock (path -> md5), timing files left out."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage.get("outs", [])
        if out["path"] not in TIMED
    }


def registry(project: Path, uri: str | None = None) -> dict:
    """Versions of the project's model (number -> model md5) and its aliases."""
    script = (
        "import json, sys, mlflow; from tasks.core.config import load_params; "
        "from tasks.core import tracking; params = load_params('params.yaml'); "
        "tracking.use_store(params); client = mlflow.MlflowClient(); "
        "name = tracking.registered_model_name(params); "
        "versions = client.search_model_versions(f\"name = '{name}'\"); "
        "model = client.get_registered_model(name); "
        "print(json.dumps({'versions': {v.version: v.tags.get('model_md5') for v in versions}, "
        "'aliases': model.aliases}))"
    )
    env = {"MLFLOW_TRACKING_URI": uri} if uri else {}
    done = run([sys.executable, "-c", script], project, **env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def stage_started(process: subprocess.Popen, stage: str, timeout: float = 120) -> bool:
    """Wait until ``python -m tasks.<stage>`` runs under ``process``; False if it ended."""
    deadline = time.monotonic() + timeout
    parent = psutil.Process(process.pid)
    while time.monotonic() < deadline and process.poll() is None:
        try:
            for child in parent.children(recursive=True):
                if f"tasks.{stage}" in " ".join(child.cmdline()):
                    return True
        except psutil.Error:
            pass
        time.sleep(0.05)
    return False


def start(command: list[str], project: Path, **env: str) -> subprocess.Popen:
    """Start ``command`` in its own process group (a kill reaches DVC's stage process too)."""
    return subprocess.Popen(
        command,
        cwd=project,
        env={**project_env(), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize("stage", ["prepare", "validate", "tokenize", "evaluate", "register"])
def test_sigkill_in_a_stage_then_repro_gives_the_same_outputs_and_registry(trained, stage):
    before, versions = outputs(trained), registry(trained)
    process = start(["dvc", "repro", "--force", "--single-item", stage], trained)
    assert stage_started(process, stage), process.communicate()
    time.sleep(random.Random(stage).uniform(0.2, 2.0))  # a random point inside the stage
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()

    again = run(["dvc", "repro"], trained, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert outputs(trained) == before
    after = registry(trained)
    assert after["versions"] == versions["versions"]  # no duplicate, none lost
    assert {str(v) for v in after["aliases"].values()} <= set(after["versions"])
    assert run(["dvc", "status"], trained).stdout.strip().endswith("up to date.")


def test_second_repro_on_one_checkout_is_refused_and_the_first_completes(trained):
    before = outputs(trained)
    first = start(["dvc", "repro", "--force", "--single-item", "tokenize"], trained)
    assert stage_started(first, "tokenize")
    second = run(["dvc", "repro"], trained, check=False)
    assert second.returncode != 0
    message = second.stdout + second.stderr
    assert "lock" in message.lower(), message
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stdout + stderr
    assert run(["dvc", "repro"], trained).returncode == 0
    assert outputs(trained) == before


def test_two_registers_at_once_on_one_store_create_one_version(trained):
    """Two checkouts registering the same weights into one (new) store at the same time."""
    store = trained / ".state" / "shared-store"
    store.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    run(
        [sys.executable, "-c", "import mlflow; mlflow.MlflowClient().search_experiments()"],
        trained,
        MLFLOW_TRACKING_URI=uri,
    )  # fmt: skip  (the schema, created once)
    processes = [
        start([sys.executable, "-m", "tasks.register"], trained, MLFLOW_TRACKING_URI=uri)
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
    found = registry(trained, uri)
    assert len(found["versions"]) == 1, found
    assert [str(v) for v in found["aliases"].values()] == list(found["versions"])


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past it fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_during_a_checkpoint_fails_clearly_and_the_next_run_completes(trained):
    """RLIMIT_FSIZE stands in for a full disk: the first write past 64 KB fails, in the
    tracking store (the train run opens before training) or in a checkpoint."""
    before = outputs(trained)
    run(["dvc", "repro", "--force", "--single-item", "tokenize"], trained)
    done = subprocess.run(
        [sys.executable, "-m", "tasks.train"],
        cwd=trained,
        env=project_env(),
        capture_output=True,
        text=True,
        preexec_fn=_file_size_limit(64 * 1024),
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("train: error:"), done.stderr[-3000:]
    if "tracking.uri" in last:  # the store's write failed first: named, stage not started
        # (MLflow's own logger has already printed the SQL error with its traceback)
        assert "disk I/O error" in last, last
    else:
        assert "File too large" in last, last
        assert "Traceback" not in done.stderr
    again = run(["dvc", "repro"], trained, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert outputs(trained) == before


def test_tracking_server_down_fails_in_one_line_naming_the_key_and_records_nothing(trained):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = yaml.safe_load((trained / "params.yaml").read_text())
    down["tracking"]["uri"] = f"http://127.0.0.1:{port}"
    (trained / ".state" / "params-down.yaml").write_text(yaml.safe_dump(down))
    versions = registry(trained)
    report = (trained / "reports/registry.json").read_bytes()
    done = run(
        [sys.executable, "-m", "tasks.register", "--params", ".state/params-down.yaml"],
        trained,
        check=False,
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"register: error: tracking.uri: the MLflow server http://127.0.0.1:{port}"
    )
    assert "does not answer" in last and "Traceback" not in done.stderr
    assert registry(trained) == versions
    assert (trained / "reports/registry.json").read_bytes() == report


def stage_runs(project: Path, stage: str) -> int:
    """MLflow runs of ``stage`` in the project's store (each one a process that ran it)."""
    script = (
        "import mlflow; from tasks.core.config import load_params; from tasks.core import "
        "tracking; params = load_params('params.yaml'); tracking.use_store(params); "
        f"print(len(mlflow.search_runs(search_all_experiments=True, "
        f"filter_string=\"attributes.run_name = '{stage}'\")))"
    )
    return int(run([sys.executable, "-c", script], project).stdout.strip().splitlines()[-1])


def test_a_configuration_run_before_is_restored_from_the_run_cache(trained):
    """DVC's run cache, as DVC users expect it: a learning rate trained before (in the
    workspace or in an experiment) is restored, not trained again. A restored stage starts no
    process, so MLflow gets no new run for it; register runs (its out persists on purpose)
    and finds the weights already registered: no new version, registry.json agrees."""
    before, versions = outputs(trained), registry(trained)
    original = yaml.safe_load((trained / "params.yaml").read_text())["train"]["learning_rate"]
    set_params(trained, **{"train.learning_rate": original * 2})
    changed = run(["dvc", "repro"], trained)
    assert "Running stage 'train'" in changed.stdout
    assert len(registry(trained)["versions"]) == len(versions["versions"]) + 1
    trains = stage_runs(trained, "train")

    set_params(trained, **{"train.learning_rate": original})
    back = run(["dvc", "repro"], trained)
    for stage in ("train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run" in back.stdout, back.stdout
    assert "Running stage 'train'" not in back.stdout
    assert outputs(trained) == before and stage_runs(trained, "train") == trains
    after = registry(trained)
    assert len(after["versions"]) == len(versions["versions"]) + 1  # nothing new
    recorded = json.loads((trained / "reports/registry.json").read_text())
    assert after["versions"][str(recorded["version"])] == recorded["model_md5"]

    (trained / ".gitignore").write_text(".state/\n")  # tool state stays out of git
    commit(trained)  # an experiment starts from a commit
    for value in (original * 2, original):
        done = run(["dvc", "exp", "run", "-S", f"train.learning_rate={value}"], trained)
        assert "Stage 'train' is cached - skipping run" in done.stdout, done.stdout
    assert stage_runs(trained, "train") == trains
    assert len(registry(trained)["versions"]) == len(versions["versions"]) + 1


def test_a_queued_sweep_runs_every_value_and_the_experiments_compare(trained):
    """Two learning rates queued (``dvc exp run --queue -S``), run by ``dvc queue start``:
    each trains (its own MLflow train run and model version), ``dvc exp show`` lists both
    with their params and metrics and ``dvc plots diff`` compares their curves."""
    if not (trained / ".gitignore").exists():
        (trained / ".gitignore").write_text(".state/\n")
    commit(trained)
    versions, trains = registry(trained)["versions"], stage_runs(trained, "train")
    learning_rate = yaml.safe_load((trained / "params.yaml").read_text())["train"]["learning_rate"]
    original = float(learning_rate)  # dvc exp run may have written it back as a string
    rates = {"sweep-a": original * 3, "sweep-b": original / 2}
    for name, rate in rates.items():
        run(
            ["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.learning_rate={rate}"],
            trained,
        )
    run(["dvc", "queue", "start"], trained)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        status = run(["dvc", "queue", "status"], trained).stdout
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert status.count("Success") == 2, (
        status + run(["dvc", "queue", "logs", "sweep-a"], trained, check=False).stdout
    )
    shown = json.loads(run(["dvc", "exp", "show", "--json"], trained).stdout)
    found = {
        rev["name"]: rev["data"]
        for baseline in shown
        for experiment in baseline.get("experiments") or []
        for rev in experiment["revs"]
        if rev.get("name") in rates
    }
    assert set(found) == set(rates)
    for name, rate in rates.items():
        params = found[name]["params"]["params.yaml"]["data"]
        assert params["train"]["learning_rate"] == pytest.approx(rate)
        metrics = found[name]["metrics"]["reports/metrics.json"]["data"]
        assert 0 <= metrics["accuracy"] <= 1
    assert stage_runs(trained, "train") == trains + 2
    assert len(registry(trained)["versions"]) == len(versions) + 2
    plots = json.loads(run(["dvc", "plots", "diff", *rates, "--json"], trained).stdout)
    [curves] = plots["data"]["reports/validation_history.csv"]  # one chart, both experiments
    assert curves["revisions"] == list(rates)
    assert {row["rev"] for row in curves["content"]["data"]["values"]} == set(rates)
