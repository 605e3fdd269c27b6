"""Replay the curves of a finished no-pruning study through Optuna's pruners (no training).

``bench/tune_pruning.py`` keeps every study it runs in ``.state/bench/tune_pruning.db``. With a
fixed seed on CPU a trial's validation curve does not depend on the pruner, so the curves of
the no-pruning study show what any pruner would have decided on the same configurations, in
the same order: the trial-epochs it would have spent and the best score it would have kept.
(Real searches differ in one way: TPE sees pruned trials and samples differently afterwards.)

Prints its table, writes the run's JSON result (``--json``; default
``bench/results/pruning_replay-<UTC stamp>.json``, or beside ``--results``) and appends the
section (rendered by ``bench/render.py``) to ``--results`` (``bench/RESULTS.md``;
``--no-record``: print the table only).

    .venv/bin/python bench/pruning_replay.py --study 20261123T171152-none
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from pathlib import Path

import optuna
from render import pruning_replay_table  # bench/render.py
from results import add_arguments, json_path, record  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
STORAGE = f"sqlite:///{ROOT / '.state' / 'bench' / 'tune_pruning.db'}"


def pruners() -> dict[str, optuna.pruners.BasePruner]:
    """The pruners compared, built by the tune stage's ``make_pruner`` from params."""
    from tasks.core.config import load_params
    from tasks.tuning.study import make_pruner

    def product(**pruner: object) -> optuna.pruners.BasePruner:
        overrides = {f"tune.pruner.{key}": value for key, value in pruner.items()}
        return make_pruner(load_params(ROOT / "params.yaml", overrides))

    return {
        "median, warmup 0": product(type="median", warmup_steps=0),
        "median, warmup 1": product(type="median", warmup_steps=1),
        "median, warmup 2 (1 epoch)": product(type="median", warmup_steps=2),
        "median, warmup 3": product(type="median", warmup_steps=3),
        "successive halving": product(type="successive_halving"),
        "hyperband (min 1, factor 3): the new default": product(type="hyperband"),
        "hyperband, min 1, factor 2": product(type="hyperband", reduction_factor=2),
        "hyperband, min 2, factor 3": product(type="hyperband", min_resource=2),
    }


def replay(
    curves: list[list[float]], pruner: optuna.pruners.BasePruner, name: str
) -> tuple[int, float]:
    """Feed each curve to ``pruner`` in order; return evaluations spent and best kept score."""
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name=name)
    spent, best = 0, float("-inf")
    for curve in curves:
        trial = study.ask()
        for step, value in enumerate(curve, 1):
            trial.report(value, step)
            spent += 1
            if step < len(curve) and trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                break
        else:
            study.tell(trial, max(curve))
            best = max(best, max(curve))
    return spent, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", required=True, help="a no-pruning study in the bench db")
    parser.add_argument("--storage", default=STORAGE)
    parser.add_argument("--repeats", type=int, default=20, help="study names to average over")
    parser.add_argument("--no-record", action="store_true", help="print the table only")
    add_arguments(parser, "pruning_replay")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=args.study, storage=args.storage)
    curves = [
        [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        for t in study.trials
        if t.state == optuna.trial.TrialState.COMPLETE
    ]
    total, ceiling = sum(map(len, curves)), max(max(c) for c in curves)
    result = {
        "bench": "pruning_replay",
        "command": shlex.join([".venv/bin/python", "bench/pruning_replay.py", *sys.argv[1:]]),
        "study": args.study,
        "storage": args.storage,
        "curves": len(curves),
        "evaluations": total,
        "ceiling": ceiling,
        "repeats": args.repeats,
        "pruners": [],
    }
    # Hyperband puts trials into brackets by a hash of the study name: average over names.
    print("\n".join(pruning_replay_table(result)))
    for label, pruner in pruners().items():
        runs = [replay(curves, pruner, f"replay-{i}") for i in range(args.repeats)]
        spent = sum(r[0] for r in runs) / len(runs)
        lost = [100 * (ceiling - r[1]) for r in runs]
        result["pruners"].append(
            {
                "pruner": label,
                "spent": spent,
                "saved": 1 - spent / total,
                "best_kept": sum(r[1] for r in runs) / len(runs),
                "lost_points": sum(lost) / len(lost),
                "lost_points_worst": max(lost),
            }
        )
        print(pruning_replay_table(result)[-1], flush=True)
    finished = datetime.datetime.now(datetime.UTC)
    result["finished"] = finished.isoformat(timespec="seconds")
    if not args.no_record:
        target = args.json or json_path("pruning_replay", f"{finished:%Y%m%dT%H%M%S}", args.results)
        record(result, args.results, target)


if __name__ == "__main__":
    sys.exit(main())
