"""Stage ``tune``: search the ``train`` hyperparameters with Optuna on the validation split and
hand the best ones to ``train``.

Reads ``task``, ``model.name_or_path``, ``tracking``, ``train`` and ``tune`` from
``params.yaml`` and ``data/tokenized/{train,validation}`` (never test). Writes
``reports/best_params.json`` (train's input: ``source`` tuned or defaults and why, the values;
nothing that differs between two identical runs, so train re-runs only when it changes),
``reports/tune_trials.csv``, ``reports/tune_report.md`` and ``tune_*.png`` plots.

Budget: ``tune.n_trials`` finished trials (``tune.timeout``: a cap). The first trial trains
``params.yaml``'s values; ``source: tuned`` only when a searched trial beats it and the
trivial baseline. One study per configuration, continued by a re-run; ``--worker`` only runs
trials of it. Contract: docs/reproducibility.md; workers: docs/servers.md.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path
from typing import Annotated, Any

import optuna
import typer
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS, Params
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.modeling.training import build_model
from tasks.core.paths import REPORTS_DIR, TOKENIZED_DIR
from tasks.core.pretrained.model import quiet_transformers
from tasks.tuning import finalists
from tasks.tuning.data import TuningData, load_tuning_data
from tasks.tuning.objective import Objective, free_memory
from tasks.tuning.results import (
    BEST_PARAMS,
    log_stage,
    summarize,
    view_study,
    write_reports,
)
from tasks.tuning.storage import describe_storage, open_storage, storage_spec
from tasks.tuning.study import (
    count_states,
    join_study,
    make_sampler,
    other_studies,
    run_trials,
    study_name,
    study_progress,
)

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=user_help(__doc__))


def run_search(
    params: Params,
    data: TuningData,
    study: optuna.Study,
    timeout: float | None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
) -> int:
    """Run trials here until the study holds ``tune.n_trials`` or ``timeout``; how many ran here."""
    deadline = time.monotonic() + timeout if timeout is not None else None
    objective = Objective(params, data, parent_run_id, experiment_id, deadline)
    return run_trials(params, study, objective)


def work(params: Params, tokenized_dir: Path, state_dir: Path) -> int:
    """A ``--worker``: run trials of this configuration's study, write no output; count run."""
    import mlflow

    if not params.tune.enabled:
        raise StageError("tune.enabled is false: there is no study to work on")
    quiet_transformers()
    warnings.simplefilter("ignore", ExperimentalWarning)
    spec = storage_spec(params, state_dir)
    if spec.startswith("sqlite"):
        log.warning("tune.storage is SQLite: workers on this machine only (use PostgreSQL)")
    data = load_tuning_data(params, tokenized_dir, state_dir)
    name = study_name(params, data.fingerprint)
    study, _ = join_study(params, open_storage(spec, params), name, stage=False)
    # Its own sampler stream: workers started together must not sample the same points.
    offset = len(study.get_trials(deepcopy=False)) + os.getpid()
    study.sampler = make_sampler(params, params.tune.seed + offset)
    experiment_id = tracking.configure(params, state_dir)
    tags = {tracking.STAGE_TAG: "tune-worker", "optuna.study": name}
    log.info("worker %d joined study %r in %s", os.getpid(), name, describe_storage(spec))
    with mlflow.start_run(
        run_name=f"tune-worker-{os.getpid()}", experiment_id=experiment_id, tags=tags
    ) as run:
        ran = run_search(params, data, study, params.tune.timeout, run.info.run_id, experiment_id)
    log.info("worker %d: %d trial(s) run; study %r %s", os.getpid(), ran, name,
             count_states(study.get_trials(deepcopy=False)))  # fmt: skip
    return ran


def tune(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Search hyperparameters on ``tokenized_dir``'s train and validation splits and write the
    reports to ``reports_dir``; ``state_dir`` holds the default study storage. Returns the
    summary (``best_params.json``'s keys plus the report-only facts). Raises StageError on bad
    input or when no trial of the study completed."""
    reports_dir = Path(reports_dir)
    if not params.tune.enabled:
        return _write_disabled(params, reports_dir)
    quiet_transformers()
    warnings.simplefilter("ignore", ExperimentalWarning)
    data = _load_data(params, tokenized_dir, state_dir)
    spec = storage_spec(params, state_dir)
    name = study_name(params, data.fingerprint)
    started = time.perf_counter()
    timeout = params.tune.timeout
    deadline = time.monotonic() + timeout if timeout is not None else None
    with tracking.stage_run(params, "tune", state_dir) as run:
        storage = open_storage(spec, params)
        study = _open_study(params, storage, spec, name, data)
        run_search(
            params, data, study, params.tune.timeout, run.info.run_id, run.info.experiment_id
        )
        trials = study.get_trials(deepcopy=False)
        summary = summarize(params, data, name, spec, trials)
        summary["other_studies"] = other_studies(storage, params.tune.study_name, name)
        _require_completed(name, trials)
        if finalists.needed(params, summary):
            whole = _whole_train_objective(params, data, run, deadline)
            summary |= finalists.decide_on_whole_train(
                params, data, storage, name, trials, summary, whole
            )
        view = view_study(trials, name)
        write_reports(params, reports_dir, summary, trials, view)
        log_stage(summary, reports_dir, time.perf_counter() - started)
    log.info(
        "%s: %s; %s; %.0f s",
        "tuned values" if summary["source"] == "tuned" else "train keeps params.yaml's values",
        summary["reason"], summary["trials"], time.perf_counter() - started,
    )  # fmt: skip
    return summary


def _load_data(params: Params, tokenized_dir: Path, state_dir: Path) -> TuningData:
    """The tuning data, the start point loaded once: a bad model fails before any trial."""
    data = load_tuning_data(params, tokenized_dir, state_dir)
    build_model(data.task, data.source, data.labels, None)
    free_memory()
    return data


def _whole_train_objective(
    params: Params, data: TuningData, run: Any, deadline: float | None
) -> Objective:
    """The finalists round's objective: the whole train split, nested under ``run``."""
    return Objective(
        params, data.on_whole_train(), run.info.run_id, run.info.experiment_id,
        deadline, finalists=True,
    )  # fmt: skip


def _write_disabled(params: Params, reports_dir: Path) -> dict[str, Any]:
    """``tune.enabled: false``: the reports say so and train keeps params.yaml's values."""
    summary = {
        "status": "disabled",
        "reason": "tune.enabled is false: train uses params.yaml alone",
        "params": {},
    }
    write_reports(params, reports_dir, summary, [], None)
    log.info("tuning disabled; wrote %s", reports_dir / BEST_PARAMS)
    return summary


def _open_study(
    params: Params, storage: optuna.storages.BaseStorage, spec: str, name: str, data: TuningData
) -> optuna.Study:
    """Study ``name`` with params.yaml's values queued, sampler seeded by its length."""
    study, queued = join_study(params, storage, name, stage=True)
    seed = params.tune.seed + len(study.get_trials(deepcopy=False)) - queued
    study.sampler = make_sampler(params, seed)
    done, running, _ = study_progress(study)
    log.info(
        "study %r in %s: %d finished and %d running trials of %s%s; train on %d of %d "
        "examples",
        name, describe_storage(spec), done, running, params.tune.n_trials or "(timeout)",
        " + the defaults" if queued else "", len(data.train), data.train_examples,
    )  # fmt: skip
    return study


def _require_completed(name: str, trials: list[Any]) -> None:
    """Raise StageError (trial counts, first failure) unless a trial of ``name`` completed."""
    if not any(t.state == TrialState.COMPLETE for t in trials):
        reasons = {t.user_attrs.get("fail_reason") for t in trials} - {None}
        raise StageError(
            f"no trial of study {name!r} completed ({count_states(trials)}); "
            f"first failure: {next(iter(reasons), 'none')}"
        )


@app.command()
@stage_command("tune")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    tokenized_dir: Annotated[
        Path, typer.Option(help="output of the tokenize stage")
    ] = TOKENIZED_DIR,
    reports_dir: Annotated[Path, typer.Option(help="where the reports go")] = REPORTS_DIR,
    state_dir: Annotated[
        Path, typer.Option(help="default study storage, registry cache")
    ] = STATE_DIR,
    worker: Annotated[
        bool, typer.Option("--worker", help="only run trials of the shared study; write no outputs")
    ] = False,
) -> None:
    """Search hyperparameters on the validation split (see the module docstring)."""
    params = stage_params(params_path, "tune")  # checked: inputs tracked by DVC
    if worker:
        work(params, tokenized_dir, state_dir)
    else:
        tune(params, tokenized_dir, reports_dir, state_dir)


if __name__ == "__main__":
    app()
