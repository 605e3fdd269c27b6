"""One Optuna study per configuration: name, sampler, pruner, joining it, the trial loop."""

from __future__ import annotations

import datetime
import logging
import os
import re
import time
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from tasks.core.config import AUTO_EPOCHS_RANGE, Params
from tasks.core.errors import StageError
from tasks.core.progress import TrialProgress, quiet_optuna
from tasks.tuning.space import DEFAULTS_ROLE, enqueue_defaults

log = logging.getLogger("tasks.tune")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what tune.n_trials counts
DIRECTION = "maximize"  # every selectable metric is higher-is-better
FINGERPRINT_CHARS = 12  # hex digits of the configuration hash in the study name
TIMEOUT = "timeout"  # user attr ``stopped`` of a trial that tune.timeout stopped (FAIL state)
SURPLUS = "surplus"  # user attr ``stopped`` of a trial started after the study was full (FAIL)


def make_sampler(params: Params, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE; ``constant_liar`` keeps parallel workers from sampling the same point."""
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=params.tune.startup_trials, constant_liar=True
    )


def make_pruner(params: Params) -> optuna.pruners.BasePruner:
    """``tune.pruner``; steps are evaluation numbers (``evals_per_epoch`` per epoch)."""
    pruner, tune = params.tune.pruner, params.tune
    if pruner.type == "median":
        # Optuna may prune at step == n_warmup_steps and our steps count from 1: +1.
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
        most = AUTO_EPOCHS_RANGE[1] if most == "auto" else most
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max(int(most) * tune.evals_per_epoch, pruner.min_resource + 1),
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def study_progress(study: optuna.Study) -> tuple[int, int, bool]:
    """(finished, running) trials of every process, and whether a defaults trial is queued."""
    finished = running = 0
    defaults_queued = False
    for trial in study.get_trials(deepcopy=False):
        finished += trial.state in FINISHED
        running += trial.state == TrialState.RUNNING
        if trial.state == TrialState.WAITING and trial.user_attrs.get("role") == DEFAULTS_ROLE:
            defaults_queued = True
    return finished, running, defaults_queued


def run_trials(params: Params, study: optuna.Study, objective: Any) -> int:
    """Run trials of ``objective`` here, one at a time, until the study holds ``tune.n_trials``
    finished trials of every process; return how many ran here. No trial starts while
    finished + running reach ``n_trials`` (a queued defaults trial always runs): then wait,
    failing stale trials for re-queuing. After the objective's ``deadline`` no trial starts.
    A trial that raises is FAIL and the search goes on, up to ``n_trials`` failures here."""
    deadline = objective.deadline
    target = params.tune.n_trials
    callbacks = [TrialProgress(target or 0)]
    quiet_optuna()
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
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(min(params.tune.heartbeat_interval, 5))
            continue
        with warnings.catch_warnings():  # no optimize timeout: 0 s left would start no trial
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.optimize(
                objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=True
            )
        last = study.get_trials(deepcopy=False)
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
    """Create or join study ``name``; return it and whether a defaults trial was queued."""
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
    """The other studies of ``prefix`` in the storage, most recent first."""
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


def is_surplus(trial: optuna.Trial, n_trials: int | None) -> bool:
    """Whether ``n_trials`` finished or running trials precede this one (not the defaults)."""
    if n_trials is None or trial.user_attrs.get("role") == DEFAULTS_ROLE:
        return False
    counted = (*FINISHED, TrialState.RUNNING)
    ahead = trial.study.get_trials(deepcopy=False, states=counted)
    return sum(t.number < trial.number for t in ahead) >= n_trials


def count_states(trials: list[FrozenTrial]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.state.name] = counts.get(trial.state.name, 0) + 1
    return counts
