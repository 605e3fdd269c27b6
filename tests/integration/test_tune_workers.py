"""Parallel tuning on a real PostgreSQL server: three ``python -m tasks.tune --worker``
processes share one study, one is killed with SIGKILL in the middle of a trial; Optuna's
heartbeat fails that trial, it is retried with the same values by a live worker, and the
study ends with exactly ``n_trials`` finished trials; the stage then writes its outputs
without running another trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from conftest import ROOT, make_project, project_env, start_point_in
from test_tune import FAST_SPACE, make_tracking, tokenized_without_test, tune_section

from tasks.core.config import load_params
from tasks.tune import tune
from tasks.tuning.results import BEST_PARAMS
from tasks.tuning.space import DEFAULTS_ROLE
from tasks.tuning.study import FINISHED, SURPLUS

N_TRIALS = 5
WORKERS = 3


def worker_params(tmp_path: Path, project: Path, model: Path, storage: str) -> Path:
    """A params.yaml for the workers: tiny model, PostgreSQL study storage, three
    evaluations per trial (so a trial can be killed between two), fast heartbeats."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(start_point_in(project, model))
    raw["tokenize"]["max_length"] = 32
    raw["tracking"]["uri"] = make_tracking(tmp_path)
    raw["train"].update(precision="fp32", epochs=3)
    raw["tune"] = tune_section(
        n_trials=N_TRIALS, space=FAST_SPACE, pruner={"type": "none"}, train_fraction=0.5,
        evals_per_epoch=1, storage=storage, heartbeat_interval=1,
        # 5 s: a live worker on a loaded 2-core machine still beats in time.
        grace_period=5, max_retries=1,
    )  # fmt: skip
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def running_mid_trial(study: optuna.Study, pids: set[int]) -> optuna.trial.FrozenTrial | None:
    """A running trial of one of ``pids`` that has reported an evaluation (not its last)."""
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if trial.user_attrs.get("worker_pid") in pids and trial.intermediate_values:
            return trial
    return None


def test_three_workers_one_killed_share_one_study(tmp_path, tiny_model_dir, postgres):
    import mlflow

    storage = postgres.create_database("tune_workers")
    project = make_project(tmp_path / "project")
    params_path = worker_params(tmp_path, project, tiny_model_dir, storage)
    params = load_params(params_path)
    tokenized = tokenized_without_test(tmp_path, params)
    state = tmp_path / "state"
    command = [sys.executable, "-m", "tasks.tune", "--worker", "--params", str(params_path)]
    command += ["--tokenized-dir", str(tokenized), "--state-dir", str(state)]
    env = {**project_env(), "OMP_NUM_THREADS": "1"}
    logs = [(tmp_path / f"worker-{i}.log").open("w") for i in range(WORKERS)]
    workers = [
        subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT)
        for log in logs
    ]
    pids = {w.pid for w in workers}
    try:
        deadline = time.monotonic() + 300
        study = victim = None
        while victim is None:  # the event: a worker's trial between two evaluations
            assert time.monotonic() < deadline, "no trial reached an evaluation in time"
            assert all(w.poll() is None for w in workers), "a worker exited early"
            if study is None:
                names = optuna.get_all_study_names(storage)
                study = optuna.load_study(study_name=names[0], storage=storage) if names else None
            victim = running_mid_trial(study, pids) if study is not None else None
            time.sleep(0.2)
        killed_pid = victim.user_attrs["worker_pid"]
        os.kill(killed_pid, signal.SIGKILL)
        codes = {w.pid: w.wait(timeout=max(deadline - time.monotonic(), 1)) for w in workers}
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for log in logs:
            log.close()
    output = "\n".join(p.read_text()[-3000:] for p in sorted(tmp_path.glob("worker-*.log")))
    assert codes.pop(killed_pid) == -signal.SIGKILL
    assert set(codes.values()) == {0}, output

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    dead = trials[victim.number]
    assert dead.state.name == "FAIL", output  # failed by the heartbeat, not left running
    (retry,) = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert retry.params == victim.params and retry.state.name == "COMPLETE"
    assert retry.user_attrs["worker_pid"] in pids - {killed_pid}
    finished = [t for t in trials.values() if t.state in FINISHED]
    assert len(finished) == N_TRIALS  # the study reached n_trials, none counted twice
    assert all(t.state.name == "COMPLETE" for t in finished)  # no pruner
    assert len({tuple(sorted(t.params.items())) for t in finished}) == N_TRIALS  # distinct
    assert sum(t.user_attrs.get("role") == DEFAULTS_ROLE for t in finished) == 1
    assert len({t.user_attrs["worker_pid"] for t in finished}) >= 2  # shared, not serial
    others = [t for t in trials.values() if t.state.name == "FAIL" and t.number != dead.number]
    assert all(t.user_attrs.get("stopped") == SURPLUS and not t.params for t in others)
    assert not [t for t in trials.values() if not t.state.is_finished()]  # none lost

    client = mlflow.MlflowClient(tracking_uri=params.tracking.uri)
    run = client.get_run(dead.user_attrs["mlflow_run_id"])  # closed by the retry callback
    assert run.info.status == "FAILED" and run.data.tags["trial.state"] == "FAIL"

    # The stage joins the complete study, runs nothing and writes the outputs.
    summary = tune(params, tokenized, tmp_path / "reports", state)
    assert summary["study_name"] == study.study_name
    assert summary["storage"].startswith("postgresql://tune_workers_user@127.0.0.1:")
    assert len(study.get_trials(deepcopy=False)) == len(trials)
    assert summary["trials"]["COMPLETE"] == N_TRIALS
    assert summary["trials"]["FAIL"] == 1 + len(others)
    assert (tmp_path / "reports" / BEST_PARAMS).is_file()
