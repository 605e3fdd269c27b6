"""The values a tune trial trains with: sampled from ``tune.space``, or (the defaults trial)
``params.yaml``'s own ``train`` values, queued once per study and whenever they change."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tasks.core.config import Params, SearchDimension

DEFAULTS_ROLE = "defaults"  # user attr ``role`` of the trial that runs params.yaml's values


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
    """Whether ``value`` is a point of ``dim`` (TPE mis-models a fixed value outside it)."""
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
    """Queue a trial of the ``train`` values unless the study has one; ``True`` when queued."""
    values = defaults_values(params)
    present = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    for trial in study.get_trials(deepcopy=False, states=present):
        if is_defaults(trial, values):
            return False
    space = params.tune.space
    fixed = {name: value for name, value in values.items() if _fits(space[name], value)}
    study.enqueue_trial(fixed, user_attrs={"role": DEFAULTS_ROLE, "defaults": values})
    return True


def is_defaults(trial: FrozenTrial, values: dict[str, Any]) -> bool:
    return trial.user_attrs.get("role") == DEFAULTS_ROLE and (
        trial.user_attrs.get("defaults") == values
    )


def suggest_defaults(trial: optuna.Trial, params: Params) -> dict[str, Any]:
    """The defaults trial's values: in-space ones through the suggest calls, others as is."""
    values = defaults_values(params)
    space = params.tune.space
    suggest(trial, {n: space[n] for n, value in values.items() if _fits(space[n], value)})
    return values
