"""Benchmark (not a test): does tuning pay on the default data? Untuned vs tuned test accuracy
on rotten tomatoes over several seeds, with the compute each used.

For each seed (``train.seed`` and ``tune.seed``), with the default ``params.yaml`` otherwise
(the ``make run`` budget: ``tune.n_trials`` trials on ``tune.train_fraction`` of train, then
``tune.finalists``), in one process on the product's own stage functions:

1. the tune stage (``tasks.tune.tune``) in a fresh study: the search on the share, and the
   finalists round when a searched trial leads there;
2. the train stage and the test split's accuracy (``tasks.evaluate.evaluate``) for each
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import RESULTS, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state inside the project

WORK = ROOT / ".state" / "bench" / "tune_transfer"
POLICIES = ("untuned", "share", "finalists")


def prepared_data(params, work: Path) -> Path:
    """The default source prepared and tokenized once (the pipeline's own stages)."""
    from tasks.prepare import prepare
    from tasks.tokenize import tokenize

    tokenized = work / "tokenized"
    if not (tokenized / "manifest.json").exists():
        prepare(params, work / "prepared", ROOT / "data" / "raw")
        tokenize(params, work / "prepared", tokenized, work / "tokenize.json", work / "state")
    return tokenized


def train_and_test(params, values: dict, tokenized: Path, work: Path) -> dict:
    """Train ``values`` over params.yaml's train section (tuning off), score the test split."""
    from tasks.core.config import overlay_train
    from tasks.evaluate import evaluate
    from tasks.train import train

    untuned = params.model_copy(update={"tune": params.tune.model_copy(update={"enabled": False})})
    fixed = untuned.model_copy(update={"train": overlay_train(untuned.train, values)})
    started = time.perf_counter()
    metrics = train(fixed, tokenized, work / "model", work / "reports", work / "state")
    scores = evaluate(fixed, tokenized, work / "model", work / "reports")
    return {
        "values": values,
        "test_accuracy": scores["accuracy"],
        "test_f1_macro": scores["f1_macro"],
        "examples_trained": round(metrics["epochs_run"] * metrics["train_examples"]),
        "train_s": round(time.perf_counter() - started, 1),
    }


def one_seed(seed: int, tokenized: Path, work: Path, overrides: dict) -> dict:
    from tasks.core.config import load_params
    from tasks.tune import tune

    params = load_params(
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
    started = time.perf_counter()
    summary = tune(params, tokenized, work / "tune", work / "state")
    tune_s = time.perf_counter() - started
    rows = summary.get("finalists") or []
    # The share's choice: the leading searched trial when the finalists round ran (it ran
    # because that trial beat the defaults there), else the stage's own choice.
    share_values = _trial_values(work, summary, rows[0]["trial"]) if rows else summary["params"]
    chosen = {"untuned": {}, "share": share_values, "finalists": summary["params"]}
    trained: dict[str, dict] = {}
    for policy in POLICIES:
        key = json.dumps(chosen[policy], sort_keys=True)
        if key not in trained:
            trained[key] = train_and_test(params, chosen[policy], tokenized, work / policy)
    policies = {p: trained[json.dumps(chosen[p], sort_keys=True)] for p in POLICIES}
    search_examples = summary["examples_trained"]
    return {
        "seed": seed,
        "decided_on": summary["decided_on"],
        "source": summary["source"],
        "reason": summary["reason"],
        "trials": summary["trials"],
        "finalists": rows,
        "defaults_value": summary["defaults_value"],
        "defaults_full_value": summary["defaults_full_value"],
        "tune_s": round(tune_s, 1),
        "tune_examples_trained": search_examples,
        "policies": policies,
    }


def _trial_values(work: Path, summary: dict, number: int) -> dict:
    import optuna

    study = optuna.load_study(
        study_name=summary["study_name"], storage=f"sqlite:///{work / 'optuna.db'}"
    )
    return dict(study.trials[number].params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="params.yaml overrides (YAML values), e.g. tune.n_trials=2 (a smoke run)",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch
    import yaml

    from tasks.core.config import load_params
    from tasks.core.model import quiet_transformers

    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    now = datetime.datetime.now(datetime.UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}"
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    base = load_params(ROOT / "params.yaml", overrides=overrides)
    work = WORK / stamp
    data_keys = ("task", "data", "prepare", "tokenize", "model")
    data_id = json.dumps(base.model_dump(mode="json", include=set(data_keys)), sort_keys=True)
    tokenized = prepared_data(
        base, WORK / f"data-{hashlib.sha256(data_id.encode()).hexdigest()[:8]}"
    )
    seeds = [one_seed(s, tokenized, work / f"seed-{s}", overrides) for s in args.seeds]
    means = {p: statistics.mean(s["policies"][p]["test_accuracy"] for s in seeds) for p in POLICIES}
    result = {
        "bench": "tune_transfer",
        "started": now.isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads",
        "platform": platform.platform(),
        "command": "bench/tune_transfer.py " + shlex.join(sys.argv[1:]),
        "overrides": overrides,
        "data": {"source": str(base.data.source), "train_examples": _count(tokenized)},
        "tune": {
            "n_trials": base.tune.n_trials,
            "train_fraction": base.tune.train_fraction,
            "finalists": base.tune.finalists,
            "pruner": base.tune.pruner.type,
        },
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
