"""Stage ``tune``: search the ``train`` hyperparameters with Optuna on the validation split and
hand the best ones to ``train``.

Reads ``task``, ``model.name_or_path``, ``tracking``, ``train`` and ``tune`` from
``params.yaml`` and ``data/tokenized/{train,validation}`` (the test split is never opened).
Writes ``reports/best_params.json`` (read by ``train``: ``source`` tuned or defaults and why,
the chosen values, their trial number and score, the defaults' and the trivial baseline's
scores, the study and metric; ``status: disabled`` when ``tune.enabled`` is false; nothing
that differs between two identical runs, so ``train`` re-runs only when the result changes),
``reports/tune_trials.csv`` (number, state, value, ``params_*``, duration in seconds, epochs
run), ``reports/tune_report.md`` (also the storage, trial counts and the other studies) and
three plots (``reports/tune_history.png``, ``tune_importance.png``, ``tune_intermediate.png``).

Each trial trains with the train module's own pieces (``build_model``, ``apply_method``,
its ``Trainer`` subclass, collators and length-grouped sampler) on a stratified
``tune.train_fraction`` of train, evaluates ``tune.evals_per_epoch`` times per epoch,
reports the validation metric to Optuna at every evaluation and stops when the pruner says
so. Its value is the best evaluation, as train keeps its best epoch. Budget: ``tune.n_trials``
finished (complete or pruned) trials in the study, so the same commit, params and data give
the same result on a busy and an idle machine; ``tune.timeout`` (default none) is a cap in
seconds: then no trial starts, and a running one stops and is failed with ``stopped:
timeout`` (shown as timed out in the report; never pruned, never chosen).

Never worse than the defaults: the study's first trial (or the next, after the ``train``
values changed) trains ``params.yaml``'s own ``train`` values on the same data with the same
evaluations, and is never pruned. ``best_params.json`` names a searched trial
(``source: tuned``) only when it scores above that trial and above the trivial baseline
(the metric of a constant prediction on validation: the most frequent label, or no entities);
otherwise ``source: defaults`` and train keeps ``params.yaml``'s values. For token tasks no
pruning decision is taken before a trial's entity F1 first rises above 0.

One study per configuration: the study is named ``{tune.study_name}-{fingerprint}``
(``tune.study_name`` is the prefix), where the fingerprint hashes what makes two trials
comparable: the tokenized train and validation data, the model, labels, metric, the train
values outside ``tune.space``, the space itself, ``tune.train_fraction`` and
``tune.evals_per_epoch`` (not ``n_trials``, ``timeout``, the pruner or the seed). The TPE
sampler and the pruner therefore see only trials of the objective they are searching. The
study lives in ``tune.storage`` (by default SQLite in ``.state/optuna/``): a re-run of the same
configuration continues its study, keeps every finished trial and runs only what is missing
to reach ``tune.n_trials``; a changed configuration starts a new study, and the old ones stay
in the storage, listed in the report.

Parallel tuning: ``python -m tasks.tune --worker`` (any number, on any machine with the
tokenized data) joins the same study in a shared ``tune.storage`` (``postgresql://...``;
Optuna's RDB storage) and runs trials until the study holds ``tune.n_trials`` finished
ones, writing no outputs; the stage runs trials too and writes the outputs once the study
is complete. No trial starts while finished + running trials reach ``n_trials`` (a trial
that two workers start at once is failed as ``surplus`` before training), so the study ends
with exactly ``n_trials``. Running trials send Optuna's heartbeats; a trial whose worker died
is failed and re-queued with the same values (``RetryHeartbeatStaleTrialCallback``, the
successor of ``RetryFailedTrialCallback``) and run by a live worker or the next run.

MLflow: the stage's run (a child of the pipeline execution's run) holds the summary, the
reports and plots; every trial is a nested run with its values, the validation metrics of
each evaluation (step = evaluation number), its final state and duration.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import functools
import gc
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import typer
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from tasks.cli import stage_command
from tasks.config import (
    BEST_PARAMS_FILE,
    DEFAULT_PARAMS,
    Params,
    SearchDimension,
    TrainParams,
    load_params,
    overlay_train,
    require_tracked_inputs,
)
from tasks.environment import PROJECT_ROOT, STATE_DIR
from tasks.errors import StageError
from tasks.modeling import (
    ModelSource,
    choose_precision,
    load_matching_tokenizer,
    make_collator,
    model_columns,
    quiet_transformers,
    resolve_model_source,
    write_json,
)
from tasks.progress import TrialProgress, quiet_optuna
from tasks.tokenize import MANIFEST, TOKENIZED_DIR
from tasks.train import (
    _argmax,
    _compute_metrics,
    _trainer_classes,
    apply_method,
    batch_plan,
    build_model,
)

log = logging.getLogger(__name__)
REPORTS_DIR = PROJECT_ROOT / "reports"
BEST_PARAMS = BEST_PARAMS_FILE
TRIALS_CSV = "tune_trials.csv"
REPORT_MD = "tune_report.md"
PLOTS = {
    "history": "tune_history.png",
    "importance": "tune_importance.png",
    "intermediate": "tune_intermediate.png",
}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what tune.n_trials counts
DIRECTION = "maximize"  # every selectable metric is higher-is-better
FINGERPRINT_CHARS = 12  # hex digits of the configuration hash in the study name
# What best_params.json holds (train's input): the same for two identical runs, so no
# storage path, trial counts, durations, dates or run ids (those go to the other reports).
BEST_PARAMS_KEYS = (
    "status", "source", "reason", "study_name", "fingerprint", "metric", "direction",
    "baseline", "defaults_trial", "defaults_value", "best_trial", "best_value", "params",
)  # fmt: skip
DEFAULTS_ROLE = "defaults"  # user attr ``role`` of the trial that runs params.yaml's values
TIMEOUT = "timeout"  # user attr ``stopped`` of a trial that tune.timeout stopped (FAIL state)
SURPLUS = "surplus"  # user attr ``stopped`` of a trial started after the study was full (FAIL)

app = typer.Typer(add_completion=False, help=__doc__)


# --- search space -----------------------------------------------------------------------------


def suggest(trial: optuna.Trial, space: dict[str, SearchDimension]) -> dict[str, Any]:
    """Sample one value per dimension of ``tune.space`` (names as in the space)."""
    values: dict[str, Any] = {}
    for name, dim in space.items():
        if dim.type == "categorical":
            values[name] = trial.suggest_categorical(name, list(dim.choices or []))
        elif dim.type == "int":
            step = int(dim.step) if dim.step is not None else 1
            values[name] = trial.suggest_int(
                name, int(dim.low), int(dim.high), step=step, log=dim.log
            )
        else:
            values[name] = trial.suggest_float(
                name, float(dim.low), float(dim.high), step=dim.step, log=dim.log
            )
    return values


def defaults_values(params: Params) -> dict[str, Any]:
    """The ``train`` values of the keys in ``tune.space`` (what train uses untuned)."""
    values = {}
    for name in params.tune.space:
        value: Any = params.train
        for part in name.split("."):
            value = getattr(value, part)
        values[name] = value
    return values


def _fits(dim: SearchDimension, value: Any) -> bool:
    """Whether ``value`` is a point of ``dim`` (Optuna would warn about, and TPE mis-model,
    a fixed value outside its distribution)."""
    if dim.type == "categorical":
        return any(type(value) is type(c) and value == c for c in dim.choices or [])
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if not dim.low <= value <= dim.high:
        return False
    return dim.step is None or math.isclose(
        round((value - dim.low) / dim.step) * dim.step, value - dim.low, abs_tol=1e-12
    )


def enqueue_defaults(study: optuna.Study, params: Params) -> bool:
    """Queue a trial of the ``train`` values themselves unless the study holds one of these
    values already (finished, running or queued); ``True`` when queued.

    Values inside the space are the trial's fixed parameters (TPE learns from them); one
    outside it (e.g. ``dropout: null``) stays out of ``trial.params`` and is trained as is.
    """
    values = defaults_values(params)
    present = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=present):
        if _is_defaults(trial, values):
            return False
    space = params.tune.space
    fixed = {name: value for name, value in values.items() if _fits(space[name], value)}
    study.enqueue_trial(fixed, user_attrs={"role": DEFAULTS_ROLE, "defaults": values})
    return True


def _is_defaults(trial: FrozenTrial, values: dict[str, Any]) -> bool:
    return trial.user_attrs.get("role") == DEFAULTS_ROLE and (
        trial.user_attrs.get("defaults") == values
    )


def suggest_defaults(trial: optuna.Trial, params: Params) -> dict[str, Any]:
    """The defaults trial's values: its fixed (in-space) parameters recorded through the
    usual suggest calls, the others as ``train`` has them."""
    values = defaults_values(params)
    space = params.tune.space
    suggest(trial, {n: space[n] for n, value in values.items() if _fits(space[n], value)})
    return values


# --- storage, sampler, pruner -----------------------------------------------------------------


def storage_spec(params: Params, state_dir: Path = STATE_DIR) -> str:
    """``tune.storage``, or the single-machine default inside the project: SQLite."""
    if params.tune.storage:
        return params.tune.storage
    return f"sqlite:///{(Path(state_dir) / 'optuna' / 'optuna.db').resolve()}"


def describe_storage(spec: str) -> str:
    """The storage for reports and logs, without a password."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(spec).render_as_string(hide_password=True)
    return spec.split("@")[-1]


class RetryStaleTrial:
    """Re-queue a trial whose worker died, with the same values (Optuna's
    ``RetryHeartbeatStaleTrialCallback``), and close its MLflow run as FAILED."""

    def __init__(self, max_retry: int) -> None:
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning("trial %d: its worker stopped sending heartbeats; re-queued", trial.number)
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):
                import mlflow

                client = mlflow.MlflowClient()
                client.set_tag(run_id, "trial.state", "FAIL")
                client.set_terminated(run_id, "FAILED")


def open_storage(spec: str, params: Params) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage of a SQLAlchemy URL (SQLite, PostgreSQL, ...) with its own
    heartbeat: a running trial beats every ``tune.heartbeat_interval`` seconds; one silent
    for ``tune.grace_period`` is failed and re-queued with the same values."""
    tune = params.tune
    engine: dict[str, Any] = {}
    if spec.startswith("sqlite:"):
        if spec.startswith("sqlite:///") and spec != "sqlite:///:memory:":
            Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # heartbeat thread + trial thread
    else:
        engine = {"pool_pre_ping": True}  # a server that restarted: reconnect, not fail
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _first_open(
            lambda: RDBStorage(
                spec,
                engine_kwargs=engine,
                heartbeat_interval=tune.heartbeat_interval,
                grace_period=tune.grace_period,
                heartbeat_stale_trial_callback=RetryStaleTrial(tune.max_retries),
            )
        )


def _first_open(open_rdb: Any, tries: int = 3) -> RDBStorage:
    """``RDBStorage`` on a new database, tried again when another process created the schema
    at the same moment: Optuna creates its tables (and alembic's) without a lock, so two
    pipelines starting on one new database (two checkouts, one storage) make one fail on a
    duplicate table or key; the next try finds the schema in place."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(tries - 1):
        try:
            return open_rdb()
        except (IntegrityError, ProgrammingError) as exc:
            text = str(exc).lower()
            if "duplicate" not in text and "already exists" not in text:
                raise
            time.sleep(1.0 + attempt)
    return open_rdb()


def make_sampler(params: Params, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE; ``constant_liar`` keeps parallel workers from sampling the same point."""
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=params.tune.startup_trials, constant_liar=True
    )


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    """``tune.pruner``; steps are evaluation numbers (``evals_per_epoch`` per epoch)."""
    pruner, tune = params.tune.pruner, params.tune
    if pruner.type == "median":
        # Optuna may prune at step == n_warmup_steps; our steps count from 1, so +1 keeps
        # the first ``warmup_steps`` evaluations of every trial unpruned, as documented.
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.warmup_steps + 1
        )
    if pruner.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=pruner.min_resource, reduction_factor=pruner.reduction_factor
        )
    if pruner.type == "hyperband":
        epochs = tune.space.get("epochs")
        most = max(epochs.bounds()) if epochs is not None else params.train.epochs
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max(int(most) * tune.evals_per_epoch, pruner.min_resource + 1),
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


# --- data -------------------------------------------------------------------------------------


@dataclass
class TuningData:
    """What every trial trains and evaluates on (train subset and validation only)."""

    task: str
    labels: list[str]
    metric: str
    source: ModelSource
    tokenizer: Any
    train: Any  # the stratified subset, model columns only
    validation: Any
    lengths: dict[str, list[int]]
    train_examples: int  # of the whole train split
    fingerprint: str  # the configuration whose trials are comparable: names the study
    baseline: float = 0.0  # the metric of the trivial prediction on validation
    extra: dict[str, Any] = field(default_factory=dict)


def stratified_subset(keys: list[Any], fraction: float, seed: int) -> list[int]:
    """Indices of about ``fraction`` of the rows, the same share of every key (at least one
    row per key), chosen reproducibly by ``seed``; sorted."""
    import random

    if fraction >= 1:
        return list(range(len(keys)))
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(repr(key), []).append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for name in sorted(groups):
        members = groups[name]
        rng.shuffle(members)
        chosen += members[: max(1, round(len(members) * fraction))]
    return sorted(chosen)


def _strata(task: str, labels_column: list[Any], label_names: list[str]) -> list[Any]:
    """Stratification key per example: the label (text), or the first entity tag of the
    sentence, ``O`` for none (token classification)."""
    if task == "text_classification":
        return list(labels_column)
    outside = label_names.index("O") if "O" in label_names else -1
    keys = []
    for row in labels_column:
        keys.append(next((label for label in row if label not in (-100, outside)), outside))
    return keys


def load_tuning_data(params: Params, tokenized_dir: Path, state_dir: Path) -> TuningData:
    """Load train (a stratified ``train_fraction``) and validation; the test split is never
    opened.

    Raises:
        StageError: missing or mismatched tokenized data.
    """
    import datasets

    tokenized_dir = Path(tokenized_dir)
    manifest_path = tokenized_dir / MANIFEST
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path}: not found (run the tokenize stage first)")
    manifest = json.loads(manifest_path.read_text())
    task = params.task
    if manifest["task"] != task:
        raise StageError(
            f"{tokenized_dir} holds {manifest['task']} data but task is {task} (re-run tokenize)"
        )
    splits = {}
    for split in ("train", "validation"):
        try:
            splits[split] = datasets.load_from_disk(str(tokenized_dir / split))
        except FileNotFoundError as exc:
            raise StageError(f"{tokenized_dir / split}: {exc} (re-run tokenize)") from None
        if len(splits[split]) == 0:
            raise StageError(f"{tokenized_dir}: the {split} split is empty")
    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, state_dir)
    tokenizer = load_matching_tokenizer(source, manifest, tokenized_dir)
    labels: list[str] = manifest["labels"]
    full = splits["train"]
    tune = params.tune
    keep = stratified_subset(_strata(task, full["labels"], labels), tune.train_fraction, tune.seed)
    subset = full.select(keep) if len(keep) < len(full) else full
    validation = splits["validation"]
    identity = {
        "task": task,
        "model": [source.spec, source.registry_version],
        "data": [_dataset_fingerprint(tokenized_dir / s, splits[s]) for s in splits],
        "labels": labels,
        "metric": params.train.resolved_metric(task),
        "train": {
            k: v
            for k, v in params.train.model_dump(mode="json").items()
            if k not in tune.space and k not in ("resume", "save_steps", "logging_steps")
        },
        "space": {k: v.model_dump(mode="json") for k, v in tune.space.items()},
        "train_fraction": tune.train_fraction,
        "evals_per_epoch": tune.evals_per_epoch,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    metric = params.train.resolved_metric(task)
    return TuningData(
        task=task,
        labels=labels,
        metric=metric,
        source=source,
        tokenizer=tokenizer,
        train=subset.select_columns(model_columns(subset)),
        validation=validation.select_columns(model_columns(validation)),
        lengths={"train": list(subset["length"]), "validation": list(validation["length"])},
        train_examples=len(full),
        fingerprint=digest[:FINGERPRINT_CHARS],
        baseline=trivial_baseline(task, list(validation["labels"]), labels, metric),
    )


def trivial_baseline(task: str, gold: list[Any], labels: list[str], metric: str) -> float:
    """``metric`` of the best constant prediction, scored like a trial (``_compute_metrics``):
    the most frequent validation label for text (it maximises accuracy, macro and weighted
    F1 among constants), no entities (``O`` everywhere: entity F1 0) for token tasks."""
    import numpy as np
    from transformers import EvalPrediction

    if task == "text_classification":
        majority = max(sorted(set(gold)), key=gold.count)
        predicted: Any = np.full(len(gold), majority)
        gold_array: Any = np.asarray(gold)
    else:
        outside = labels.index("O") if "O" in labels else 0
        width = max(len(row) for row in gold)
        gold_array = np.full((len(gold), width), -100)
        for i, row in enumerate(gold):
            gold_array[i, : len(row)] = row
        predicted = np.full_like(gold_array, outside)
    scores = _compute_metrics(task, labels)(EvalPrediction(predicted, gold_array))
    return float(scores[metric])


def _dataset_fingerprint(directory: Path, dataset: Any) -> str:
    """The content fingerprint tokenize stores in ``state.json`` (stable across runs)."""
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((directory / "state.json").read_text())["_fingerprint"]
    return str(getattr(dataset, "_fingerprint", ""))


# --- one trial --------------------------------------------------------------------------------


def _reporter_class() -> type:
    """The TrainerCallback that evaluates ``evals_per_epoch`` times per epoch, reports each
    score to the trial (and its MLflow run) and stops training when the trial is pruned or
    the search's time budget (``deadline``, monotonic seconds) is spent."""
    from transformers import TrainerCallback

    class ReportToTrial(TrainerCallback):
        def __init__(
            self,
            trial: optuna.Trial,
            metric: str,
            per_epoch: int,
            mlflow_on: bool,
            deadline: float | None = None,
            prunable: bool = True,
            wait_for_signal: bool = False,
        ):
            self.trial, self.metric, self.per_epoch = trial, metric, per_epoch
            self.mlflow_on, self.deadline = mlflow_on, deadline
            self.prunable, self.wait_for_signal = prunable, wait_for_signal
            self.points: list[int] = []
            self.values: list[float] = []
            self.pruned = self.out_of_time = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            count = max(1, math.ceil(args.num_train_epochs * self.per_epoch))
            self.points = sorted(
                {max(1, round(i * state.max_steps / count)) for i in range(1, count + 1)}
            )

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            if state.global_step in self.points:
                control.should_evaluate = True
            if self.deadline is not None and time.monotonic() > self.deadline:
                self.out_of_time = True
                control.should_training_stop = True
            return control

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw):
            metrics = metrics or {}
            step = len(self.values) + 1
            value = float(metrics[f"eval_{self.metric}"])
            self.values.append(value)
            if self.mlflow_on:
                import mlflow

                scores = {
                    k[5:]: float(v)
                    for k, v in metrics.items()
                    if k.startswith("eval_")
                    and isinstance(v, int | float)
                    and not k.endswith(("runtime", "per_second"))
                }
                scores["epoch"] = round(float(state.epoch or 0), 4)
                mlflow.log_metrics(scores, step=step)
            self.trial.report(value, step)
            # Token tasks: entity F1 stays 0 for the first evaluations of most trials (no
            # whole entity found yet), so early rungs would rank ties at random and prune
            # trials that have not started to learn. No pruning decision is asked for (and no
            # rung recorded) until this trial's score is first above 0; the trial then
            # enters every rung it passed with that score. (Validation loss would be
            # measurable from the start but ranks trials by a quantity they are not chosen
            # by, and would need a second, minimised objective.)
            if self.wait_for_signal and max(self.values) <= 0:
                return control
            # The defaults trial is asked too (its scores are the pruner's reference) but
            # always runs to its end: the final choice compares it whole.
            if self.trial.should_prune() and self.prunable:
                self.pruned = True
                control.should_training_stop = True
            return control

    return ReportToTrial


class TrialTimedOut(Exception):
    """``tune.timeout`` stopped the trial: failed (never pruned, never a best)."""


class SurplusTrial(Exception):
    """Another worker started the study's last missing trial first: failed before training
    (no values sampled), so the study ends with exactly ``tune.n_trials`` finished trials."""


@dataclass
class TrialRecord:
    epochs: float = 0.0
    evaluations: int = 0


class Objective:
    """Train and evaluate one trial's values; the study's objective function.

    Args:
        params: validated parameters (the ``train`` section is the base of every trial).
        data: from :func:`load_tuning_data`.
        parent_run_id: the stage's MLflow run; ``None`` logs nothing to MLflow.
        experiment_id: the MLflow experiment of the parent run.
        deadline: ``time.monotonic()`` at which the search's time budget ends: a trial still
            training then stops (recorded as failed, ``stopped: timeout``).
    """

    def __init__(
        self,
        params: Params,
        data: TuningData,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
        deadline: float | None = None,
    ) -> None:
        self.params, self.data = params, data
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.deadline = deadline

    def __call__(self, trial: optuna.Trial) -> float:
        import psutil

        # A re-queued trial carries the user attributes of the one whose worker died.
        earlier = trial.user_attrs.get("retry_of", trial.user_attrs.get("trial_number"))
        retry_of = earlier if earlier is not None and earlier != trial.number else None
        trial.set_user_attr("trial_number", trial.number)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        trial.set_user_attr("worker_pid", os.getpid())
        if self._surplus(trial):
            trial.set_user_attr("stopped", SURPLUS)
            trial.set_user_attr("fail_reason", f"{SURPLUS}: the study had its trials")
            raise SurplusTrial(f"trial {trial.number}: the study has its trials, not run")
        record, state, started = TrialRecord(), "FAIL", time.perf_counter()
        run_id = None
        try:
            defaults = trial.user_attrs.get("role") == DEFAULTS_ROLE
            space = self.params.tune.space
            values = suggest_defaults(trial, self.params) if defaults else suggest(trial, space)
            run_id = self._start_run(trial, values, retry_of)
            tp = overlay_train(self.params.train, values)
            value = self._fit(trial, tp, record, run_id is not None, prunable=not defaults)
            state = "COMPLETE"
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except TrialTimedOut as exc:
            trial.set_user_attr("stopped", TIMEOUT)
            trial.set_user_attr("fail_reason", f"{TIMEOUT}: {exc}")
            log.warning("trial %d: %s", trial.number, exc)
            raise
        except Exception as exc:
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            log.exception("trial %d failed", trial.number)
            raise
        finally:
            _free_memory()
            duration = time.perf_counter() - started
            rss_mb = psutil.Process().memory_info().rss / 2**20
            trial.set_user_attr("epochs_run", round(record.epochs, 4))
            trial.set_user_attr("duration_s", round(duration, 2))
            trial.set_user_attr("rss_mb", round(rss_mb, 1))
            if run_id is not None:
                self._end_run(state, duration, record, rss_mb)

    def _surplus(self, trial: optuna.Trial) -> bool:
        """Whether ``tune.n_trials`` finished or running trials numbered before this one
        exist (two workers started the last missing trial at once); the defaults trial
        always runs."""
        target = self.params.tune.n_trials
        if target is None or trial.user_attrs.get("role") == DEFAULTS_ROLE:
            return False
        counted = (*FINISHED, TrialState.RUNNING)
        ahead = trial.study.get_trials(deepcopy=False, states=counted)
        return sum(t.number < trial.number for t in ahead) >= target

    def _start_run(self, trial: optuna.Trial, values: dict[str, Any], retry_of: Any) -> Any:
        if self.parent_run_id is None:
            return None
        import mlflow

        tags = {
            "pipeline.stage": "tune-trial",
            "trial.number": str(trial.number),
            "optuna.study": trial.study.study_name,
            "trial.state": "RUNNING",
        }
        if retry_of is not None:
            tags["trial.retry_of"] = str(retry_of)
        run = mlflow.start_run(
            run_name=f"trial-{trial.number}",
            parent_run_id=self.parent_run_id,
            nested=True,
            experiment_id=self.experiment_id,
            tags=tags,
        )
        trial.set_user_attr("mlflow_run_id", run.info.run_id)
        mlflow.log_params({k: str(v) for k, v in values.items()})
        return run.info.run_id

    @staticmethod
    def _end_run(state: str, duration: float, record: TrialRecord, rss_mb: float) -> None:
        import mlflow

        mlflow.set_tag("trial.state", state)
        mlflow.log_metrics({"duration_s": duration, "epochs_run": record.epochs, "rss_mb": rss_mb})
        mlflow.end_run("FAILED" if state == "FAIL" else "FINISHED")

    def _fit(
        self,
        trial: optuna.Trial,
        tp: TrainParams,
        record: TrialRecord,
        log_mlflow: bool,
        prunable: bool = True,
    ) -> float:
        import transformers
        from transformers import PrinterCallback, TrainingArguments

        data, tune = self.data, self.params.tune
        trainer_cls, _, _ = _trainer_classes()
        precision = choose_precision(tp.precision)
        scratch = Path(tempfile.mkdtemp(prefix=f"tune-trial-{trial.number}-"))
        model = trainer = None
        try:
            transformers.set_seed(tp.seed)  # the same head initialisation in every trial
            model, _ = build_model(data.task, data.source, data.labels, tp.dropout)
            model = apply_method(model, data.task, tp)
            # The train stage's batches (token budget, scaled learning rate) in every trial.
            max_tokens, learning_rate, _ = batch_plan(
                tp, data.lengths["train"], precision.device, data.tokenizer
            )
            args = TrainingArguments(
                output_dir=str(scratch),
                per_device_train_batch_size=tp.batch_size,
                per_device_eval_batch_size=tp.batch_size * 2,
                gradient_accumulation_steps=tp.gradient_accumulation_steps,
                learning_rate=learning_rate,
                weight_decay=tp.weight_decay,
                warmup_steps=float(tp.warmup_ratio),  # a float in [0, 1) is a ratio
                lr_scheduler_type=tp.scheduler,
                num_train_epochs=tp.epochs,
                max_grad_norm=tp.max_grad_norm,
                eval_strategy="no",  # the reporter asks for evaluations at its own points
                save_strategy="no",  # trials keep no checkpoints
                logging_strategy="no",
                seed=tp.seed,
                data_seed=tp.seed,
                bf16=precision.dtype == "bf16",
                fp16=precision.dtype == "fp16",
                use_cpu=precision.device == "cpu",
                report_to="none",  # trial runs are logged here, never by Trainer's callback
                disable_tqdm=True,
                dataloader_num_workers=0,
                remove_unused_columns=False,
            )
            reporter = _reporter_class()(
                trial, data.metric, tune.evals_per_epoch, log_mlflow, self.deadline,
                prunable=prunable, wait_for_signal=data.task == "token_classification",
            )  # fmt: skip
            trainer = trainer_cls(
                model=model,
                args=args,
                train_dataset=data.train,
                eval_dataset=data.validation,
                data_collator=make_collator(data.task, data.tokenizer),
                processing_class=data.tokenizer,
                compute_metrics=_compute_metrics(data.task, data.labels),
                preprocess_logits_for_metrics=_argmax,
                callbacks=[reporter],
                lengths=data.lengths,
                group=tp.group_by_length,
                max_tokens=max_tokens,
            )
            trainer.remove_callback(PrinterCallback)  # no metrics dicts on stdout
            trainer.train()
            record.epochs = float(trainer.state.epoch or 0)
            record.evaluations = len(reporter.values)
            if reporter.pruned:
                raise optuna.TrialPruned(f"pruned at evaluation {len(reporter.values)}")
            if reporter.out_of_time and trainer.state.global_step < trainer.state.max_steps:
                raise TrialTimedOut(
                    f"stopped by tune.timeout after {record.epochs:.2f} of {tp.epochs} epochs"
                )
            if not reporter.values:
                raise StageError("the trial ran no evaluation")
            return max(reporter.values)  # train keeps its best epoch too
        finally:
            if trainer is not None:
                record.epochs = float(trainer.state.epoch or 0)
                trainer.accelerator.free_memory()  # drops its model/optimizer references
                trainer.model = trainer.model_wrapped = None
                trainer.optimizer = trainer.lr_scheduler = None
            del model, trainer
            shutil.rmtree(scratch, ignore_errors=True)


def _free_memory() -> None:
    """Collect the finished trial's model, optimizer and Trainer (reference cycles), and
    give cached GPU memory back."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# --- the study --------------------------------------------------------------------------------


def study_progress(study: optuna.Study) -> tuple[int, int, bool]:
    """Finished (complete or pruned) and running trials of every process, and whether a
    defaults trial is queued."""
    finished = running = 0
    defaults_queued = False
    for trial in study.get_trials(deepcopy=False):
        finished += trial.state in FINISHED
        running += trial.state == TrialState.RUNNING
        if trial.state == TrialState.WAITING and trial.user_attrs.get("role") == DEFAULTS_ROLE:
            defaults_queued = True
    return finished, running, defaults_queued


def run_search(
    params: Params,
    data: TuningData,
    study: optuna.Study,
    timeout: float | None,
    parent_run_id: str | None = None,
    experiment_id: str | None = None,
) -> int:
    """Run trials in this process, one at a time, until the study holds ``tune.n_trials``
    finished (complete or pruned) trials of every process; return how many ran here.

    Surplus rule (parallel workers): no trial starts while finished + running trials reach
    ``n_trials`` (a queued defaults trial always runs); this process then waits for the
    running ones, failing and re-queuing those whose worker stopped beating (Optuna's
    ``fail_stale_trials``), and runs the retries. After ``timeout`` seconds no trial starts
    and a running one stops (failed, ``stopped: timeout``). A trial that raises is recorded
    as FAIL and the search goes on (up to ``n_trials`` failures in this process: a broken
    objective must not loop forever); a pruned one as PRUNED.
    """
    deadline = time.monotonic() + timeout if timeout is not None else None
    target = params.tune.n_trials
    objective = Objective(params, data, parent_run_id, experiment_id, deadline)
    callbacks = [TrialProgress(target or 0)]  # trial i/n, best so far, pruned
    quiet_optuna()  # instead of Optuna's [I ...] lines
    ran = failed = 0
    while True:
        out_of_time = deadline is not None and time.monotonic() >= deadline
        if out_of_time and ran:  # the first trial starts even so (as study.optimize does)
            break
        if target is not None and failed >= target:
            log.warning("%d trials failed in this process: it stops", failed)
            break
        finished, running, defaults_queued = study_progress(study)
        if target is not None and finished >= target and not defaults_queued:
            break
        if target is not None and finished + running >= target and not defaults_queued:
            if out_of_time:
                break
            with warnings.catch_warnings():  # the missing trials run elsewhere: wait
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(params.tune.heartbeat_interval, 5))
            continue
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.optimize(
                objective, n_trials=1, timeout=left, catch=(Exception,),
                callbacks=callbacks, gc_after_trial=True,
            )  # fmt: skip
        last = study.get_trials(deepcopy=False)  # this process's trial: the latest it ran
        mine = [t for t in last if t.user_attrs.get("worker_pid") == os.getpid()]
        if mine and max(mine, key=lambda t: t.number).state == TrialState.FAIL:
            failed += max(mine, key=lambda t: t.number).user_attrs.get("stopped") != SURPLUS
        ran += 1
    return ran


def study_name(params: Params, fingerprint: str) -> str:
    """The study of one configuration: ``{tune.study_name}-{fingerprint}``."""
    return f"{params.tune.study_name}-{fingerprint}"


def join_study(
    params: Params, storage: optuna.storages.BaseStorage, name: str, stage: bool
) -> tuple[optuna.Study, bool]:
    """Create the study ``name`` or join it (another process may have created it); return it
    and whether a defaults trial was queued.

    The defaults trial is queued by the process that created the study (creation is atomic
    in the storage, so parallel workers queue it once) and, in an existing study that has
    trials, by the stage only (``train`` values changed since: a new defaults trial).
    """
    kwargs = {"study_name": name, "storage": storage, "pruner": make_pruner(params)}
    try:
        study = optuna.create_study(direction=DIRECTION, **kwargs)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study, created = optuna.load_study(**kwargs), False
    if study.direction.name.lower() != DIRECTION:
        raise StageError(f"study {name!r} minimizes; choose another tune.study_name")
    joined = stage and bool(study.get_trials(deepcopy=False))
    return study, (created or joined) and enqueue_defaults(study, params)


def other_studies(
    storage: optuna.storages.BaseStorage, prefix: str, current: str
) -> list[dict[str, Any]]:
    """The studies of other configurations under the same ``tune.study_name`` prefix in the
    storage (and a study named just ``prefix``, from before one study per configuration):
    name, number of trials, best value and first start, most recent first."""
    pattern = re.compile(rf"{re.escape(prefix)}(-[0-9a-f]{{{FINGERPRINT_CHARS}}})?")
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=True):
        if summary.study_name == current or not pattern.fullmatch(summary.study_name):
            continue
        best = summary.best_trial
        found.append(
            {
                "study_name": summary.study_name,
                "trials": summary.n_trials,
                "best_value": best.value if best is not None else None,
                "best_trial": best.number if best is not None else None,
                "started": summary.datetime_start,
            }
        )
    oldest = datetime.datetime.min
    return sorted(found, key=lambda s: (s["started"] or oldest, s["study_name"]), reverse=True)


def work(params: Params, tokenized_dir: Path, state_dir: Path) -> int:
    """One parallel worker (``python -m tasks.tune --worker``): join the study of this
    configuration in ``tune.storage`` and run trials until it holds ``tune.n_trials``
    finished ones (or ``tune.timeout``); writes no stage output (the stage does, once the
    study is complete). Returns the number of trials this worker ran.

    Its trials are nested MLflow runs under a ``tune-worker`` run of its own.
    """
    import mlflow

    from tasks import tracking

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
             _count_states(study.get_trials(deepcopy=False)))  # fmt: skip
    return ran


# --- the stage --------------------------------------------------------------------------------


def tune(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Search hyperparameters and write the reports (see the module docstring).

    Args:
        params: validated parameters.
        tokenized_dir: output of the tokenize stage (train and validation are read).
        reports_dir: receives ``best_params.json``, ``tune_trials.csv``, ``tune_report.md``
            and the plots.
        state_dir: the default study storage (``optuna/``) and the registry cache.

    Returns:
        The summary: the content of ``best_params.json`` (its keys are ``BEST_PARAMS_KEYS``)
        and, for the reports, the storage, the trial counts by state, the trial-epochs
        spent, the train examples per trial and the other studies of the prefix.

    Raises:
        StageError: bad input, or no trial of the study completed.
    """
    reports_dir = Path(reports_dir)
    if not params.tune.enabled:
        summary = {
            "status": "disabled",
            "reason": "tune.enabled is false: train uses params.yaml alone",
            "params": {},
        }
        _write_reports(params, reports_dir, summary, [], None)
        log.info("tuning disabled; wrote %s", reports_dir / BEST_PARAMS)
        return summary

    from tasks import tracking

    quiet_transformers()
    warnings.simplefilter("ignore", ExperimentalWarning)
    tune_params = params.tune
    data = load_tuning_data(params, tokenized_dir, state_dir)
    # The start point loads once here, so a model that cannot load fails the stage with one
    # message before any trial, instead of failing every trial with a traceback each.
    build_model(data.task, data.source, data.labels, None)
    _free_memory()
    spec = storage_spec(params, state_dir)
    name = study_name(params, data.fingerprint)
    started = time.perf_counter()
    with tracking.stage_run(params, "tune", state_dir) as run:
        storage = open_storage(spec, params)
        # params.yaml's own values are always a candidate: the first trial of a study (or
        # the next one, when the train values changed since), never pruned.
        study, queued = join_study(params, storage, name, stage=True)
        # Seeded by the study's length before this run queued anything: a re-run samples
        # new points, reproducibly.
        seed = tune_params.seed + len(study.get_trials(deepcopy=False)) - queued
        study.sampler = make_sampler(params, seed)
        done, running, _ = study_progress(study)
        log.info(
            "study %r in %s: %d finished and %d running trials of %s%s; train on %d of %d "
            "examples",
            name, describe_storage(spec), done, running, tune_params.n_trials or "(timeout)",
            " + the defaults" if queued else "", len(data.train), data.train_examples,
        )  # fmt: skip
        run_search(
            params, data, study, tune_params.timeout, run.info.run_id, run.info.experiment_id
        )
        trials = study.get_trials(deepcopy=False)
        summary = _summary(params, data, name, spec, trials)
        summary["other_studies"] = other_studies(storage, tune_params.study_name, name)
        if not any(t.state == TrialState.COMPLETE for t in trials):
            reasons = {t.user_attrs.get("fail_reason") for t in trials} - {None}
            raise StageError(
                f"no trial of study {name!r} completed ({_count_states(trials)}); "
                f"first failure: {next(iter(reasons), 'none')}"
            )
        view = _view_study(trials, name)
        _write_reports(params, reports_dir, summary, trials, view)
        _log_stage(summary, reports_dir, time.perf_counter() - started)
    log.info(
        "%s: %s; %s; %.0f s",
        "tuned values" if summary["source"] == "tuned" else "train keeps params.yaml's values",
        summary["reason"], summary["trials"], time.perf_counter() - started,
    )  # fmt: skip
    return summary


def _count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts


def _summary(
    params: Params, data: TuningData, name: str, spec: str, trials: list[FrozenTrial]
) -> dict[str, Any]:
    """The content of ``best_params.json`` (``BEST_PARAMS_KEYS``), then the facts for the
    reports only."""
    return {
        "status": "tuned",
        **choose(trials, data.baseline, defaults_values(params), data.metric),
        "study_name": name,
        "fingerprint": data.fingerprint,
        "metric": data.metric,
        "direction": DIRECTION,
        # Reports only: a path, and counts that a timeout or a killed worker can change.
        "storage": describe_storage(spec),
        "trials": _count_states(trials),
        "trial_epochs": round(sum(t.user_attrs.get("epochs_run", 0.0) for t in trials), 3),
        "train_examples": len(data.train),
        "train_fraction": params.tune.train_fraction,
    }


def choose(
    trials: list[FrozenTrial], baseline: float, defaults: dict[str, Any], metric: str
) -> dict[str, Any]:
    """What train uses: the best searched trial only if it beats both the trivial baseline
    and the trial of params.yaml's own values (same data, same evaluations; ties keep the
    defaults, then the earlier trial), else params.yaml (``source: defaults``).

    Returns ``source``, ``reason``, ``baseline``, ``defaults_trial``/``defaults_value``,
    ``best_trial``/``best_value`` (the chosen trial: ``None`` when nothing beat the
    baseline) and ``params`` (the values that replace train's; empty for the defaults).
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    own = [t for t in complete if _is_defaults(t, defaults)]
    base = min(own, key=lambda t: t.number, default=None)
    searched = [t for t in complete if t.user_attrs.get("role") != DEFAULTS_ROLE]
    eligible = [t for t in searched if t.value > baseline]
    best = max(eligible, key=lambda t: (t.value, -t.number), default=None)
    chosen: dict[str, Any] = {
        "baseline": baseline,
        "defaults_trial": base.number if base else None,
        "defaults_value": base.value if base else None,
    }
    floor = f"the trivial baseline {baseline:.4f} ({metric} of a constant prediction)"
    if best is not None and (base is None or best.value > base.value):
        against = (
            f"the defaults (trial {base.number}, {base.value:.4f})"
            if base
            else "the defaults (their trial did not complete)"
        )
        reason = f"trial {best.number} ({best.value:.4f}) beats {against} and {floor}"
        # Replace train.<key> for the train stage (tune.enabled); other keys: params.yaml.
        return {"source": "tuned", "reason": reason, **chosen, "best_trial": best.number,
                "best_value": best.value, "params": dict(best.params)}  # fmt: skip
    if base is not None and base.value > baseline:
        top = f"the best searched trial scored {best.value:.4f}" if best else "none beat " + floor
        reason = f"no searched trial beats the defaults (trial {base.number}, {base.value:.4f}); "
        return {"source": "defaults", "reason": reason + top, **chosen,
                "best_trial": base.number, "best_value": base.value, "params": {}}  # fmt: skip
    reason = f"no trial beats {floor}: train keeps params.yaml's values"
    return {"source": "defaults", "reason": reason, **chosen, "best_trial": None,
            "best_value": None, "params": {}}  # fmt: skip


def _view_study(trials: list[FrozenTrial], name: str) -> optuna.Study:
    """An in-memory study of the finished trials (for plots)."""
    view = optuna.create_study(direction=DIRECTION, study_name=name)
    view.add_trials([t for t in trials if t.state.is_finished()])
    return view


# --- reports ----------------------------------------------------------------------------------


def _write_reports(
    params: Params,
    reports_dir: Path,
    summary: dict[str, Any],
    trials: list[FrozenTrial],
    view: optuna.Study | None,
) -> None:
    reports_dir.mkdir(parents=True, exist_ok=True)
    names = list(params.tune.space)
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.value is not None else "",
            **{f"params_{n}": t.params.get(n, "") for n in names},
            "duration": t.user_attrs.get("duration_s", ""),
            "epochs_run": t.user_attrs.get("epochs_run", ""),
            "retry_of": t.user_attrs.get("retry_of", ""),
            "role": t.user_attrs.get("role", "search"),  # defaults: params.yaml's values
            "stopped": t.user_attrs.get("stopped", ""),  # timeout: tune.timeout stopped it
        }
        for t in trials
    ]
    fields = ["number", "state", "value", *(f"params_{n}" for n in names)]
    fields += ["duration", "epochs_run", "retry_of", "role", "stopped"]
    tmp = reports_dir / f".{TRIALS_CSV}.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(reports_dir / TRIALS_CSV)
    notes = _write_plots(reports_dir, view, summary, names)
    _write_markdown(params, reports_dir / REPORT_MD, summary, rows, notes)
    best = {key: summary[key] for key in BEST_PARAMS_KEYS if key in summary}
    write_json(reports_dir / BEST_PARAMS, best)  # last: train's input


def _write_plots(
    reports_dir: Path, view: optuna.Study | None, summary: dict[str, Any], names: list[str]
) -> dict[str, str]:
    """The three PNGs (a note in the image where a plot is not possible); returns the notes.
    Importances are computed over the trials that sampled every dimension (a defaults trial
    with a value outside the space does not hide that dimension)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    makers = {
        "history": plots.plot_optimization_history,
        "importance": functools.partial(plots.plot_param_importances, params=names),
        "intermediate": plots.plot_intermediate_values,
    }
    notes: dict[str, str] = {}
    for key, make in makers.items():
        path = reports_dir / PLOTS[key]
        tmp = path.with_name(f".{path.name}.tmp.png")
        figure = None
        try:
            if view is None:
                raise ValueError(summary.get("reason", "no study"))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = make(view)
            figure = axes.figure
            figure.set_size_inches(8, 5)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            notes[key] = str(exc) or type(exc).__name__
            figure, axes = plt.subplots(figsize=(8, 2))
            axes.axis("off")
            axes.text(0.5, 0.5, f"not available: {notes[key]}", ha="center", wrap=True)
        figure.savefig(tmp, dpi=100, bbox_inches="tight")
        plt.close(figure)
        tmp.replace(path)
    return notes


def _write_markdown(
    params: Params,
    path: Path,
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    notes: dict[str, str],
) -> None:
    lines = ["# Hyperparameter search", ""]
    if summary["status"] != "tuned":
        lines += [f"Tuning is **disabled** ({summary['reason']}).", ""]
    else:
        tune = params.tune
        counts = ", ".join(f"{v} {k.lower()}" for k, v in sorted(summary["trials"].items()))
        lines += [
            f"Study `{summary['study_name']}` in `{summary['storage']}`: {len(rows)} trials "
            f"({counts}), {summary['trial_epochs']} trial-epochs; pruner "
            f"`{tune.pruner.type}`, TPE seed {tune.seed}. The study holds this configuration "
            f"alone (`tune.study_name` `{tune.study_name}` + fingerprint "
            f"`{summary['fingerprint']}` of the data, model, space and fixed train values).",
            f"Each trial trains on {summary['train_examples']:,} examples (a stratified "
            f"{tune.train_fraction:.0%} of train) and is scored on the validation split "
            f"({summary['metric']}, {tune.evals_per_epoch} evaluation(s) per epoch).",
            "",
            f"The trivial baseline (constant prediction) scores {summary['baseline']:.4f}; "
            "a trial must beat it and the trial of `params.yaml`'s own values "
            f"(the defaults: trial {_fmt(summary['defaults_trial'])}, "
            f"{_fmt(summary['defaults_value'])}) to be used.",
            "",
        ]
        if summary["source"] == "tuned":
            lines += [
                f"**Tuned: trial {summary['best_trial']}, {summary['metric']} "
                f"{summary['best_value']:.4f}** ({summary['reason']}). The train stage uses "
                "these values in place of `params.yaml`'s `train` keys (other keys unchanged):",
                "",
                "| parameter | tuned | params.yaml |",
                "|---|---|---|",
            ]
        else:
            lines += [
                f"**Defaults kept** ({summary['reason']}). The train stage uses `params.yaml`'s "
                "`train` values:",
                "",
                "| parameter | params.yaml |",
                "|---|---|",
            ]
        for name, value in defaults_values(params).items():
            tuned = summary["params"].get(name)
            cells = [_fmt(tuned), _fmt(value)] if summary["source"] == "tuned" else [_fmt(value)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        names = [k for k in (rows[0] if rows else {}) if k.startswith("params_")]
        lines += ["", "## Trials", ""]
        header = ["number", "state", "value", *names, "duration", "epochs_run"]
        lines += ["| " + " | ".join(h.removeprefix("params_") for h in header) + " |"]
        lines += ["|" + "---|" * len(header)]
        for row in rows:
            cells = [_fmt(row[h]) for h in header]
            if row["stopped"] == TIMEOUT:
                cells[1] = "timed out (FAIL)"  # tune.timeout, not the pruner
            elif row["stopped"] == SURPLUS:
                cells[1] = "surplus, not run (FAIL)"  # a parallel worker was first
            if row["role"] == DEFAULTS_ROLE:
                cells[1] += " (defaults)"
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", *_other_studies_markdown(tune.study_name, summary["other_studies"])]
    lines += ["", "## Plots", ""]
    titles = {"history": "Optimization history", "importance": "Parameter importances"}
    titles["intermediate"] = "Validation metric at each evaluation"
    for key, name in PLOTS.items():
        note = f" (not available: {notes[key]})" if key in notes else ""
        lines += [f"![{titles[key]}]({name}){note}", ""]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(path)


def _other_studies_markdown(prefix: str, studies: list[dict[str, Any]]) -> list[str]:
    lines = ["## Other studies", ""]
    if not studies:
        return [*lines, f"None: no other study named `{prefix}-*` in this storage."]
    lines += [
        f"Studies of other configurations named `{prefix}-*` in the same storage, kept and "
        "not used by this search (their trials do not reach its sampler or pruner); most "
        "recent first:",
        "",
        "| study | trials | best value | best trial | started |",
        "|---|---|---|---|---|",
    ]
    for study in studies:
        started = study["started"]
        when = f"{started:%Y-%m-%d %H:%M}" if started is not None else ""
        cells = [f"`{study['study_name']}`", study["trials"], study["best_value"]]
        lines.append("| " + " | ".join(map(_fmt, [*cells, study["best_trial"], when])) + " |")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _log_stage(summary: dict[str, Any], reports_dir: Path, wall_time: float) -> None:
    """The summary, best values and reports on the stage's MLflow run (the active run)."""
    import mlflow

    metrics = {f"trials_{k.lower()}": float(v) for k, v in summary["trials"].items()}
    metrics |= {"trial_epochs": summary["trial_epochs"], "baseline": summary["baseline"]}
    for key in ("best_value", "defaults_value"):
        if summary[key] is not None:
            metrics[key] = summary[key]
    metrics["wall_time_s"] = wall_time
    mlflow.log_metrics(metrics)
    mlflow.log_params({f"best.{k}": str(v) for k, v in summary["params"].items()})
    mlflow.set_tags(
        {
            "tune.study": summary["study_name"],
            "tune.best_trial": str(summary["best_trial"]),
            "tune.source": summary["source"],
            "tune.metric": summary["metric"],
        }
    )
    for name in (BEST_PARAMS, TRIALS_CSV, REPORT_MD, *PLOTS.values()):
        mlflow.log_artifact(str(reports_dir / name), artifact_path="tune")


@app.command()
@stage_command("tune")
def main(
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
    tokenized_dir: Path = typer.Option(TOKENIZED_DIR, help="output of the tokenize stage"),
    reports_dir: Path = typer.Option(REPORTS_DIR, help="where the reports go"),
    state_dir: Path = typer.Option(STATE_DIR, help="default study storage, registry cache"),
    worker: bool = typer.Option(
        False, "--worker", help="only run trials of the shared study; write no outputs"
    ),
) -> None:
    """Search hyperparameters on the validation split (see the module docstring)."""
    params = load_params(params_path)
    # Before the model is read: a local start point must be in models/pretrained/.
    require_tracked_inputs(params, PROJECT_ROOT, ["model.name_or_path"])
    if worker:
        work(params, tokenized_dir, state_dir)
    else:
        tune(params, tokenized_dir, reports_dir, state_dir)


if __name__ == "__main__":
    app()
