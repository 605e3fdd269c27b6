"""The finalists round's rules (tasks/tuning/finalists.py) on real Optuna trial objects: who
becomes a finalist, when the round runs, and the choice from whole-split scores."""

from __future__ import annotations

import optuna
from conftest import tiny_params
from optuna.distributions import FloatDistribution

from tasks.tuning.finalists import choose_on_full_train, needed, pick_finalists
from tasks.tuning.space import defaults_values

SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}


def params(**tune):
    section = {"space": SPACE, "train_fraction": 0.2, "finalists": 1, **tune}
    return tiny_params("text_classification", "unused", tune=section, train={"learning_rate": 5e-5})


def trial(number: int, value: float | None, role: str | None = None, state="COMPLETE", **values):
    attrs = {"role": role, "defaults": defaults_values(params())} if role else {}
    made = optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        value=value,
        params=values,
        distributions={name: FloatDistribution(1e-6, 1.0) for name in values},
        user_attrs=attrs,
    )
    made.number = number
    return made


def test_finalists_are_the_best_searched_trials_above_the_baseline():
    trials = [
        trial(0, 0.90, "defaults", learning_rate=5e-5),
        trial(1, 0.80, learning_rate=1e-4),
        trial(2, 0.85, learning_rate=2e-4),
        trial(3, 0.85, learning_rate=3e-4),  # a tie: the earlier trial ranks first
        trial(4, 0.50, learning_rate=1e-3),  # at the baseline: never a finalist
        trial(5, None, state="PRUNED", learning_rate=1e-5),
    ]
    assert [t.number for t in pick_finalists(trials, 0.50, 2)] == [2, 3]
    assert [t.number for t in pick_finalists(trials, 0.50, 9)] == [2, 3, 1]
    assert pick_finalists(trials, 0.50, 0) == []


def test_the_round_runs_only_when_the_share_chose_a_searched_trial():
    assert needed(params(), {"source": "tuned"})
    assert not needed(params(), {"source": "defaults"})  # the defaults won without it
    assert not needed(params(finalists=0), {"source": "tuned"})
    assert not needed(params(train_fraction=1.0), {"source": "tuned"})  # trials saw it all


def test_the_whole_split_decides_and_ties_keep_the_defaults():
    finalist = trial(3, 0.88, learning_rate=2e-4)
    defaults_full = trial(0, 0.84, "defaults", learning_rate=5e-5)
    won = choose_on_full_train(
        params(), [defaults_full, trial(1, 0.86, learning_rate=2e-4)], [finalist], 0.5, "acc", 0
    )
    assert won["source"] == "tuned" and won["best_trial"] == 3 and won["best_value"] == 0.86
    assert won["params"] == {"learning_rate": 2e-4} and won["defaults_full_value"] == 0.84
    assert won["finalists"] == [{"trial": 3, "share_value": 0.88, "full_value": 0.86}]

    lost = choose_on_full_train(
        params(), [defaults_full, trial(1, 0.84, learning_rate=2e-4)], [finalist], 0.5, "acc", 0
    )
    assert lost["source"] == "defaults" and lost["params"] == {}
    assert lost["best_trial"] == 0 and lost["best_value"] == 0.84
    assert "no finalist beats the defaults (0.8400" in lost["reason"]
    assert "led on the 20% share" in lost["reason"]

    # A finalist (or the defaults) without a whole-split score: no decision here.
    failed = trial(1, None, state="FAIL", learning_rate=2e-4)
    other = trial(1, 0.9, learning_rate=2e-4)
    for incomplete in ([defaults_full, failed], [other]):
        assert choose_on_full_train(params(), incomplete, [finalist], 0.5, "acc", 0) is None
