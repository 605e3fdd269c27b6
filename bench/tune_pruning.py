"""Benchmark (not a test): the same Optuna search with and without pruning.

Both searches use the tune stage's own code (``tasks.tune``: data subset, objective, TPE
sampler, pruner) with the same seed, space and trial count, on the same stratified train
subset and the whole validation split. For each it reports the compute spent (trial-epochs:
training epochs summed over trials, and wall time) and the best validation score. Target:
pruning spends at least 40% fewer trial-epochs at no more than 0.5 points lower best score.

Prints its section, writes the run's JSON result (``--json``; default
``bench/results/tune_pruning-<UTC stamp>.json``, or beside ``--results``) and appends the
section (rendered by ``bench/render.py``) to ``--results`` (``bench/RESULTS.md``).

    .venv/bin/python bench/tune_pruning.py --trials 10 --fraction 0.1
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import render  # noqa: E402 - bench/render.py
from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state and scratch inside the project
from tasks.core.config import load_params  # noqa: E402

STORAGE = ROOT / ".state" / "bench" / "tune_pruning.db"  # the studies, one per variant and run


def run_variant(params, data, pruner: str) -> dict:
    """One search on an in-memory study; returns its compute and best score."""
    import optuna

    from tasks.tune import run_search
    from tasks.tuning.study import make_pruner, make_sampler

    variant = params.model_copy(
        update={
            "tune": params.tune.model_copy(
                update={"pruner": params.tune.pruner.model_copy(update={"type": pruner})}
            )
        }
    )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S")
    STORAGE.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        direction="maximize",
        sampler=make_sampler(variant, variant.tune.seed),
        pruner=make_pruner(variant),
        storage=f"sqlite:///{STORAGE}",  # kept: every trial's curve, for inspection
        study_name=f"{stamp}-{pruner}",
    )
    started = time.perf_counter()
    run_search(variant, data, study, timeout=None)  # until the study holds tune.n_trials
    wall = time.perf_counter() - started
    done = study.get_trials(deepcopy=False)
    complete = [t for t in done if t.state.name == "COMPLETE"]
    return {
        "pruner": pruner,
        "trials": len(done),
        "complete": len(complete),
        "pruned": sum(t.state.name == "PRUNED" for t in done),
        "failed": sum(t.state.name == "FAIL" for t in done),
        "trial_epochs": sum(t.user_attrs.get("epochs_run", 0.0) for t in done),
        "planned_epochs": sum(t.params.get("epochs", params.train.epochs) for t in done),
        "wall_s": wall,
        "best": max((t.value for t in complete), default=None),  # None: none complete
        "best_params": study.best_params if complete else {},
        "study": study.study_name,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml")
    parser.add_argument("--tokenized-dir", default=str(ROOT / "data" / "tokenized"))
    parser.add_argument("--trials", type=int, default=10, help="trials per search")
    parser.add_argument("--fraction", type=float, default=0.1, help="tune.train_fraction")
    parser.add_argument("--pruner", default="median", help="the pruner to compare with none")
    add_arguments(parser, "tune_pruning")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")

    from tasks.core.environment import STATE_DIR
    from tasks.core.modeling.precision import choose_precision
    from tasks.core.pretrained.model import quiet_transformers
    from tasks.core.tracking import device_name
    from tasks.tuning.data import load_tuning_data

    quiet_transformers()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {"tune.train_fraction": args.fraction, "tune.n_trials": args.trials}
    params = load_params(args.params, overrides=overrides)
    data = load_tuning_data(params, Path(args.tokenized_dir), STATE_DIR)
    print(
        f"{len(data.train)} of {data.train_examples} train examples, "
        f"{len(data.validation)} validation; metric {data.metric}; {args.trials} trials each",
        flush=True,
    )
    rows = []
    for pruner in (args.pruner, "none"):
        rows.append(run_variant(params, data, pruner))
        row = rows[-1]
        print(
            f"  {pruner}: {row['trial_epochs']:.2f} trial-epochs, best "
            f"{_or_nan(row['best']):.4f}, {row['wall_s']:.0f} s",
            flush=True,
        )
    pruned, full = rows
    saved = 1 - pruned["trial_epochs"] / full["trial_epochs"]
    wall_saved = 1 - pruned["wall_s"] / full["wall_s"]
    gap = (_or_nan(full["best"]) - _or_nan(pruned["best"])) * 100  # points
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    tune = params.tune
    finished = datetime.datetime.now(datetime.UTC)
    result = {
        "bench": "tune_pruning",
        "finished": finished.isoformat(timespec="seconds"),
        "machine": device_name(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "command": shlex.join([".venv/bin/python", str(script), *sys.argv[1:]]),
        "model": params.model.name_or_path,
        "precision": params.train.precision,
        "dtype": str(choose_precision(params.train.precision).dtype),
        "data": {
            "train": len(data.train),
            "train_examples": data.train_examples,
            "fraction": args.fraction,
            "validation": len(data.validation),
            "metric": data.metric,
        },
        "search": {
            "seed": tune.seed,
            "startup_trials": tune.startup_trials,
            "trials": args.trials,
            "evals_per_epoch": tune.evals_per_epoch,
            "pruner": args.pruner,
            "pruner_startup_trials": tune.pruner.startup_trials,
            "pruner_warmup_steps": tune.pruner.warmup_steps,
            "space": list(tune.space),
        },
        "variants": rows,
        "summary": {
            "saved": saved,
            "wall_saved": wall_saved,
            "gap_points": None if math.isnan(gap) else gap,
            "met": saved >= 0.40 and gap <= 0.5,
        },
        "storage": str(STORAGE.relative_to(ROOT)),
    }
    print("\n".join(["", *render(result)]))
    target = args.json or json_path("tune_pruning", f"{finished:%Y%m%dT%H%M%S}", args.results)
    record(result, args.results, target)


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


if __name__ == "__main__":
    main()
