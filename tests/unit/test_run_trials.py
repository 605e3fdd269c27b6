"""The search loop's time budget: the first trial starts even when the budget is already
spent (a regression: Optuna's own ``timeout=0`` started none, leaving the queued defaults
trial WAITING), and no second one starts after it."""

from __future__ import annotations

import time
from types import SimpleNamespace

import optuna

from tasks.tuning.space import DEFAULTS_ROLE
from tasks.tuning.study import run_trials


class PastDeadline:
    """An objective whose budget ended before the search began."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() - 1.0
        self.calls = 0

    def __call__(self, trial: optuna.Trial) -> float:
        self.calls += 1
        return 0.5


def test_a_spent_budget_still_runs_the_queued_defaults_trial_and_no_other():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs={"role": DEFAULTS_ROLE})
    params = SimpleNamespace(tune=SimpleNamespace(n_trials=3, heartbeat_interval=1))
    objective = PastDeadline()
    assert run_trials(params, study, objective) == 1
    assert objective.calls == 1
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and trial.user_attrs["role"] == DEFAULTS_ROLE
