"""Benchmark (not a test): does tuning pay on the default data? Untuned vs tuned test accuracy
on rotten tomatoes over several seeds, with the compute each used.

For each seed (``train.seed`` and ``tune.seed``), with the default ``params.yaml`` otherwise
(the ``make run`` budget: ``tune.n_trials`` trials on ``tune.train_fraction`` of train, then
``tune.finalists``), in one process on the product's own stage functions:

1. the tune stage (``tasks.tune.tune``) in a fresh study: the search on the share, and the
   finalists round when a searched trial leads there;
2. the train stage and the test split's accuracy (``tasks.core.evaluation.scoring.evaluate``) for
each
   configuration a policy picks: ``untuned`` (params.yaml), ``share`` (the choice made on the
   share alone, ``tune.finalists: 0``) and ``finalists`` (the stage's choice). A configuration
   two policies share is trained once.

Compute: examples trained (epochs x examples, summed over trials, finalists and train).
Target (issue 17): tuned >= untuned + 0.5 points on average. Prints and stores the JSON result
(``bench/results/tune_transfer-<UTC stamp>.json``) and appends its section to RESULTS.md.

    .venv/bin/python bench/tune_transfer.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import logging
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state inside the project

WORK = ROOT / ".state" / "bench" / "tune_transfer"
POLICIES = ("untuned", "share", "finalists")


def data_folder(params) -> Path:
    """The folder of the prepared data: one per value of the keys that define it."""
    keys = {"task", "data", "prepare", "tokenize", "model"}
    data_id = json.dumps(params.model_dump(mode="json", include=keys), sort_keys=True)
    return WORK / f"data-{hashlib.sha256(data_id.encode()).hexdigest()[:8]}"


def prepared_data(params, work: Path) -> Path:
    """The default source prepared and tokenized once (the pipeline's own stages)."""
    from tasks.core.data.tokenizing import tokenize
    from tasks.prepare import prepare

    tokenized = work / "tokenized"
    if not (tokenized / "manifest.json").exists():
        prepare(params, work / "prepared", ROOT / "data" / "raw")
        tokenize(params, work / "prepared", tokenized, work / "tokenize.json", work / "state")
    return tokenized


def train_and_test(params, values: dict, tokenized: Path, work: Path) -> None:
    """Train ``values`` over params.yaml's train section (tuning off), score the test split
    (``work/reports``: train_metrics.json, metrics.json)."""
    from tasks.core.config import overlay_train
    from tasks.core.evaluation.scoring import evaluate
    from tasks.train import train

    untuned = params.model_copy(update={"tune": params.tune.model_copy(update={"enabled": False})})
    fixed = untuned.model_copy(update={"train": overlay_train(untuned.train, values)})
    train(fixed, tokenized, work / "model", work / "reports", work / "state")
    evaluate(fixed, tokenized, work / "model", work / "reports")


def seed_params(seed: int, work: Path, overrides: dict):
    from tasks.core.config import load_params

    return load_params(
        ROOT / "params.yaml",
        overrides={
            **overrides,
            "train.seed": seed,
            "tune.seed": seed,
            "tune.storage": f"sqlite:///{work / 'optuna.db'}",
            "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            "train.resume": "never",
        },
    )


def run_seed(seed: int, tokenized: Path, work: Path, overrides: dict) -> None:
    """The tune stage, then train + test for each distinct configuration the policies pick
    (in ``work/<first policy that picked it>``)."""
    from tasks.tune import tune

    params = seed_params(seed, work, overrides)
    tune(params, tokenized, work / "tune", work / "state")
    chosen = policy_values(work)
    for policy in POLICIES:
        if policy_dir(chosen, policy) == policy:
            train_and_test(params, chosen[policy], tokenized, work / policy)


def policy_values(work: Path) -> dict[str, dict]:
    """The train values each policy picks, from the tune stage's best_params.json: the
    share's choice is the leading searched trial when the finalists round ran (it ran because
    that trial beat the defaults there), else the stage's own choice."""
    import optuna

    best = json.loads((work / "tune" / "best_params.json").read_text())
    share = best["params"]
    if best["finalists"]:
        storage = f"sqlite:///{work / 'optuna.db'}"
        study = optuna.load_study(study_name=best["study_name"], storage=storage)
        share = dict(study.trials[best["finalists"][0]["trial"]].params)
    return {"untuned": {}, "share": share, "finalists": best["params"]}


def policy_dir(chosen: dict[str, dict], policy: str) -> str:
    """The folder of the run a policy's values were trained in: the first policy's that
    picked the same values (each configuration is trained once)."""
    return next(p for p in POLICIES if chosen[p] == chosen[policy])


def seed_result(seed: int, work: Path) -> dict | None:
    """One seed's result, read back from its folder (``None`` until it is complete): the
    stage's choice, the tune stage's compute (its MLflow run), each policy's test scores and
    training compute."""
    import mlflow

    chosen = policy_values(work) if (work / "tune" / "best_params.json").exists() else None
    if chosen is None:
        return None
    policies = {}
    for policy in POLICIES:
        reports = work / policy_dir(chosen, policy) / "reports"
        if not (reports / "metrics.json").exists():
            return None
        scores = json.loads((reports / "metrics.json").read_text())
        trained = json.loads((reports / "train_metrics.json").read_text())
        policies[policy] = {
            "values": chosen[policy],
            "test_accuracy": scores["accuracy"],
            "test_f1_macro": scores["f1_macro"],
            "examples_trained": round(trained["epochs_run"] * trained["train_examples"]),
            "train_s": trained["wall_time_s"],
        }
    best = json.loads((work / "tune" / "best_params.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(experiments, "tags.`pipeline.stage` = 'tune'")
    return {
        "seed": seed,
        "decided_on": best["decided_on"],
        "source": best["source"],
        "reason": best["reason"],
        "finalists": best["finalists"],
        "defaults_value": best["defaults_value"],
        "defaults_full_value": best["defaults_full_value"],
        "tune_s": round(run.data.metrics["wall_time_s"], 1),
        "tune_examples_trained": round(run.data.metrics["examples_trained"]),
        "policies": policies,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="params.yaml overrides (YAML values), e.g. tune.n_trials=2 (a smoke run)",
    )  # fmt: skip
    parser.add_argument(
        "--collect", type=Path, default=None, metavar="DIR",
        help="render the complete seeds of an earlier run's folder (.state/bench/tune_transfer/"
        "<stamp>) instead of running",
    )  # fmt: skip
    add_arguments(parser, "tune_transfer")
    args = parser.parse_args()

    import torch
    import yaml

    from tasks.core.config import load_params
    from tasks.core.pretrained.model import quiet_transformers

    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    now = datetime.datetime.now(datetime.UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}"
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = load_params(ROOT / "params.yaml", overrides=overrides)
    tokenized = prepared_data(base, data_folder(base))
    if args.collect is not None:  # an earlier (or interrupted) run: its complete seeds
        work = args.collect
    else:
        work = WORK / stamp
        for seed in args.seeds:
            run_seed(seed, tokenized, work / f"seed-{seed}", overrides)
    found = [(int(d.name.split("-")[1]), d) for d in sorted(work.glob("seed-*"))]
    seeds = [r for seed, d in found if (r := seed_result(seed, d)) is not None]
    if not seeds:
        raise SystemExit(f"{work}: no complete seed")
    means = {p: statistics.mean(s["policies"][p]["test_accuracy"] for s in seeds) for p in POLICIES}
    result = {
        "bench": "tune_transfer",
        "started": now.isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads",
        "platform": platform.platform(),
        "command": "bench/tune_transfer.py " + shlex.join(sys.argv[1:]),
        "overrides": overrides,
        "data": {"source": str(base.data.source), "examples": _count(tokenized)},
        "tune": {
            "n_trials": base.tune.n_trials,
            "train_fraction": base.tune.train_fraction,
            "finalists": base.tune.finalists,
            "pruner": base.tune.pruner.type,
        },
        "work": str(work.relative_to(ROOT)) if work.is_relative_to(ROOT) else str(work),
        "seeds_asked": args.seeds if args.collect is None else None,
        "seeds": seeds,
        "mean_test_accuracy": means,
        "gain_points": {p: round(100 * (means[p] - means["untuned"]), 2) for p in POLICIES},
    }
    print(json.dumps(result, indent=1))
    record(result, args.results, args.json or json_path("tune_transfer", stamp, args.results))


def _count(tokenized: Path) -> dict:
    return json.loads((tokenized / "manifest.json").read_text())["counts"]


if __name__ == "__main__":
    main()
