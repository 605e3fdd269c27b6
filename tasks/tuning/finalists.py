"""The finalists round: a ranking on ``tune.train_fraction`` of train does not transfer to the
whole split (bench/RESULTS.md, tune_transfer), so when a searched trial beats the defaults
there, the ``tune.finalists`` best and the defaults are trained again on the whole split as
train would, and the choice is made there. They are trials of the study ``{study}-full`` in
the same storage: a re-run trains only what is missing."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from tasks.core.config import Params
from tasks.core.progress import quiet_optuna
from tasks.tuning.data import TuningData
from tasks.tuning.objective import Objective
from tasks.tuning.space import DEFAULTS_ROLE, defaults_values, enqueue_defaults, is_defaults
from tasks.tuning.study import DIRECTION

log = logging.getLogger("tasks.tune")
FINALIST_ROLE = "finalist"  # user attr ``role`` of a searched trial re-trained on all of train
SUFFIX = "-full"  # the finalists' study: ``{study}-full``


def finalists_study_name(name: str) -> str:
    return f"{name}{SUFFIX}"


def pick_finalists(trials: list[FrozenTrial], baseline: float, count: int) -> list[FrozenTrial]:
    """The ``count`` best completed searched trials above ``baseline`` (ties: the earlier)."""
    searched = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and t.value > baseline
        and t.user_attrs.get("role") != DEFAULTS_ROLE
    ]
    return sorted(searched, key=lambda t: (-t.value, t.number))[:count]


def needed(params: Params, search_choice: dict[str, Any]) -> bool:
    """Whether a finalists round can change the decision."""
    tune = params.tune
    return tune.finalists > 0 and tune.train_fraction < 1 and search_choice["source"] == "tuned"


def run_finalists(
    params: Params,
    storage: optuna.storages.BaseStorage,
    name: str,
    finalists: list[FrozenTrial],
    objective: Any,
) -> list[FrozenTrial]:
    """Train the defaults and finalists with ``objective`` in ``{name}-full``; its trials."""
    study = optuna.create_study(
        study_name=finalists_study_name(name),
        storage=storage,
        direction=DIRECTION,
        pruner=optuna.pruners.NopPruner(),  # finalists run to their end, as train does
        load_if_exists=True,
    )
    enqueue_defaults(study, params)
    present = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    held = [t.params for t in study.get_trials(deepcopy=False, states=present)]
    for trial in finalists:
        if trial.params not in held:
            attrs = {"role": FINALIST_ROLE, "search_trial": trial.number}
            study.enqueue_trial(trial.params, user_attrs=attrs)
    quiet_optuna()
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for index, queued in enumerate(waiting, 1):
        number = queued.user_attrs.get("search_trial")
        what = "the defaults" if number is None else f"trial {number}"
        log.info("whole train split, run %d of %d: %s", index, len(waiting), what)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
    return study.get_trials(deepcopy=False)


def choose_on_full_train(
    params: Params,
    full_trials: list[FrozenTrial],
    finalists: list[FrozenTrial],
    baseline: float,
    metric: str,
    defaults_trial: int | None,
) -> dict[str, Any] | None:
    """The choice on the whole train split: a finalist only if it beats the defaults and the
    trivial baseline (ties: the defaults, then the better-ranked finalist); ``None`` when one
    did not complete there. Returns :func:`tasks.tuning.results.choose`'s changed keys,
    ``defaults_full_value`` and ``finalists`` (each one's scores on share and whole split)."""
    values = defaults_values(params)
    complete = [t for t in full_trials if t.state == TrialState.COMPLETE and t.value is not None]
    own = next((t for t in complete if is_defaults(t, values)), None)
    by_params = {repr(sorted(t.params.items())): t for t in complete if not is_defaults(t, values)}
    scored = [(f, by_params.get(repr(sorted(f.params.items())))) for f in finalists]
    if own is None or any(full is None for _, full in scored):
        return None
    rows = [
        {"trial": f.number, "share_value": f.value, "full_value": full.value} for f, full in scored
    ]
    best_search, best_full = max(scored, key=lambda pair: pair[1].value)  # first on ties
    chosen = {"defaults_full_value": own.value, "finalists": rows}
    if best_full.value > own.value and best_full.value > baseline:
        reason = (
            f"on the whole train split trial {best_search.number} ({best_full.value:.4f}) "
            f"beats the defaults ({own.value:.4f}) and the trivial baseline {baseline:.4f} "
            f"({metric} of a constant prediction)"
        )
        return {"source": "tuned", "reason": reason, **chosen, "best_trial": best_search.number,
                "best_value": best_full.value, "params": dict(best_search.params)}  # fmt: skip
    reason = (
        f"on the whole train split no finalist beats the defaults ({own.value:.4f}; best "
        f"finalist trial {best_search.number}: {best_full.value:.4f}), though trial "
        f"{best_search.number} led on the {params.tune.train_fraction:.0%} share"
    )
    return {"source": "defaults", "reason": reason, **chosen, "best_trial": defaults_trial,
            "best_value": own.value, "params": {}}  # fmt: skip


def decide_on_whole_train(
    params: Params,
    data: TuningData,
    storage: optuna.storages.BaseStorage,
    name: str,
    trials: list,
    summary: dict[str, Any],
    objective: Objective,
) -> dict[str, Any]:
    """The finalists round's summary keys (incomplete: the share's choice stands)."""
    chosen = pick_finalists(trials, data.baseline, params.tune.finalists)
    full_trials = run_finalists(params, storage, name, chosen, objective)
    decision = choose_on_full_train(
        params, full_trials, chosen, data.baseline, data.metric, summary["defaults_trial"]
    )
    if decision is None:
        log.warning("finalists round incomplete: the choice made on the train share stands")
        return {"decided_on": "train share (finalists round incomplete)"}
    epochs = sum(t.user_attrs.get("epochs_run", 0.0) for t in full_trials)
    return {
        **decision,
        "decided_on": "whole train split",
        "finalist_epochs": round(epochs, 3),
        "examples_trained": summary["examples_trained"] + round(epochs * len(data.whole_train)),
    }
