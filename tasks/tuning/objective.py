"""One tune trial: train with the train stage's own pieces, evaluate ``tune.evals_per_epoch``
times per epoch, report each score to Optuna and MLflow, stop when the pruner or
``tune.timeout`` says so. The value is the best evaluation, as train keeps its best epoch."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import transformers
from transformers import PrinterCallback, TrainerCallback

from tasks.core.config import Params, TrainParams, overlay_train
from tasks.core.errors import StageError
from tasks.core.io import sweep_stale
from tasks.core.modeling.precision import choose_precision
from tasks.core.modeling.training import (
    apply_method,
    budget_mean_batch,
    build_model,
    make_trainer,
    training_arguments,
)
from tasks.core.tracking import system_metrics
from tasks.tuning.data import TuningData
from tasks.tuning.space import DEFAULTS_ROLE, suggest, suggest_defaults
from tasks.tuning.study import SURPLUS, TIMEOUT, is_surplus

log = logging.getLogger("tasks.tune")


class ReportToTrial(TrainerCallback):
    """Evaluate ``per_epoch`` times per epoch, report to the trial, stop when pruned or late."""

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
        # Token tasks: entity F1 is 0 early (ties): no pruning decision until it is above 0.
        if self.wait_for_signal and max(self.values) <= 0:
            return control
        # The defaults trial reports (the pruner's reference) but is never pruned.
        if self.trial.should_prune() and self.prunable:
            self.pruned = True
            control.should_training_stop = True
        return control


class TrialTimedOut(Exception):
    """``tune.timeout`` stopped the trial: failed (never pruned, never a best)."""


class SurplusTrial(Exception):
    """Another worker started the study's last missing trial first: failed before training."""


@dataclass
class TrialRecord:
    epochs: float = 0.0
    evaluations: int = 0


class Objective:
    """The study's objective: train and evaluate one trial's values over ``params.train``.
    ``parent_run_id`` None: no MLflow; at ``deadline`` a trial stops (``stopped: timeout``);
    ``finalists``: no surplus rule, runs named ``full-train-<trial>``."""

    def __init__(
        self,
        params: Params,
        data: TuningData,
        parent_run_id: str | None = None,
        experiment_id: str | None = None,
        deadline: float | None = None,
        finalists: bool = False,
    ) -> None:
        self.params, self.data = params, data
        self.parent_run_id, self.experiment_id = parent_run_id, experiment_id
        self.deadline, self.finalists = deadline, finalists

    def __call__(self, trial: optuna.Trial) -> float:
        import psutil

        # A re-queued trial carries the user attributes of the one whose worker died.
        earlier = trial.user_attrs.get("retry_of", trial.user_attrs.get("trial_number"))
        retry_of = earlier if earlier is not None and earlier != trial.number else None
        trial.set_user_attr("trial_number", trial.number)
        if retry_of is not None:
            trial.set_user_attr("retry_of", retry_of)
        trial.set_user_attr("worker_pid", os.getpid())
        if not self.finalists and is_surplus(trial, self.params.tune.n_trials):
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
            free_memory()
            duration = time.perf_counter() - started
            rss_mb = psutil.Process().memory_info().rss / 2**20
            trial.set_user_attr("train_examples", len(self.data.train))
            trial.set_user_attr("epochs_run", round(record.epochs, 4))
            trial.set_user_attr("duration_s", round(duration, 2))
            trial.set_user_attr("rss_mb", round(rss_mb, 1))
            if run_id is not None:
                self._end_run(state, duration, record, rss_mb)

    def _start_run(self, trial: optuna.Trial, values: dict[str, Any], retry_of: Any) -> Any:
        if self.parent_run_id is None:
            return None
        import mlflow

        tags = {
            "pipeline.stage": "tune-finalist" if self.finalists else "tune-trial",
            "trial.number": str(trial.number),
            "optuna.study": trial.study.study_name,
            "trial.state": "RUNNING",
        }
        if retry_of is not None:
            tags["trial.retry_of"] = str(retry_of)
        name = f"trial-{trial.number}"
        if self.finalists:
            name = f"full-train-{trial.user_attrs.get('search_trial', DEFAULTS_ROLE)}"
        run = mlflow.start_run(
            run_name=name,
            parent_run_id=self.parent_run_id,
            nested=True,
            experiment_id=self.experiment_id,
            tags=tags,
            log_system_metrics=system_metrics(self.params, "tune"),
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
        data, tune = self.data, self.params.tune
        tp = tp.with_epochs_for(len(data.train))  # auto: for the trial's share of train
        precision = choose_precision(tp.precision)
        sweep_stale(Path(tempfile.gettempdir()).glob("tune-trial-*"))  # of killed trials
        scratch = Path(tempfile.mkdtemp(prefix=f"tune-trial-{trial.number}-"))
        model = trainer = None
        try:
            transformers.set_seed(tp.seed)  # the same head initialisation in every trial
            model, _ = build_model(data.task, data.source, data.labels, tp.dropout)
            model = apply_method(model, data.task, tp)
            mean_batch = budget_mean_batch(tp, list(data.train["length"]), data.tokenizer)
            args = training_arguments(
                tp, precision, scratch, best_metric=None, log_steps=False, mean_batch=mean_batch
            )
            reporter = ReportToTrial(
                trial, data.metric, tune.evals_per_epoch, log_mlflow, self.deadline,
                prunable=prunable, wait_for_signal=data.task == "token_classification",
            )  # fmt: skip
            splits = {"train": data.train, "validation": data.validation}
            trainer = make_trainer(
                data.task, model, args, splits, data.tokenizer, data.labels, [reporter],
                max_tokens=tp.max_tokens_per_batch,
            )  # fmt: skip
            trainer.remove_callback(PrinterCallback)
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
            return max(reporter.values)
        finally:
            if trainer is not None:
                record.epochs = float(trainer.state.epoch or 0)
                trainer.accelerator.free_memory()
                trainer.model = trainer.model_wrapped = None
                trainer.optimizer = trainer.lr_scheduler = None
            del model, trainer
            shutil.rmtree(scratch, ignore_errors=True)


def free_memory() -> None:
    """Collect the finished trial's objects (reference cycles); give cached GPU memory back."""
    gc.collect()
    with contextlib.suppress(ImportError):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
