"""Benchmark (not a test): how much can any fixed train configuration gain over the defaults
on rotten tomatoes? The ceiling a tuner could reach in its space (issue 17 item 2).

Each configuration (train keys over params.yaml, tuning off) is trained on the whole train
split and scored on the test split, once per seed (``train.seed``), with the product's own
stages (``bench/tune_transfer.py``'s ``train_and_test``); the defaults (``{}``) always run
first. Reports per configuration the test accuracy per seed, the mean and its gain over the
defaults, and the validation score the train stage kept. Writes the JSON result and appends
its section to RESULTS.md.

    .venv/bin/python bench/tune_headroom.py --seeds 0 1 2 \\
        --configs '{"learning_rate": 1e-4}' '{"batch_size": 16}'
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py
from tune_transfer import WORK, data_folder, prepared_data, seed_params, train_and_test  # noqa: E402

import tasks  # noqa: E402,F401 - offline, state inside the project


def label(values: dict) -> str:
    """The configuration's folder name: ``defaults`` or its keys and values run together."""
    return "-".join(f"{key}{value}" for key, value in values.items()) or "defaults"


def run_result(work: Path) -> dict | None:
    """One trained and tested configuration and seed, read back (``None`` until complete)."""
    reports = work / "reports"
    if not (reports / "metrics.json").exists():
        return None
    scores = json.loads((reports / "metrics.json").read_text())
    trained = json.loads((reports / "train_metrics.json").read_text())
    return {
        "test_accuracy": scores["accuracy"],
        "validation": trained["best_validation_metric"],
        "best_epoch": trained["best_epoch"],
        "train_s": trained["wall_time_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--configs",
        nargs="*",
        default=[],
        metavar="JSON",
        help="train values over params.yaml, e.g. '{\"learning_rate\": 1e-4}'",
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder of the runs (default .state/bench/tune_headroom/<stamp>); "
        "runs already complete there are read back, not repeated",
    )
    add_arguments(parser, "tune_headroom")
    args = parser.parse_args()

    import torch

    from tasks.core.config import load_params
    from tasks.core.pretrained.model import quiet_transformers

    quiet_transformers()
    now = datetime.datetime.now(datetime.UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}"
    work = args.work or WORK.parent / "tune_headroom" / stamp
    base = load_params(ROOT / "params.yaml")
    tokenized = prepared_data(base, data_folder(base))
    configs = [{}, *(json.loads(c) for c in args.configs)]
    rows = []
    for values in configs:
        runs = []
        for seed in args.seeds:
            folder = work / f"{label(values)}-s{seed}"
            if run_result(folder) is None:
                train_and_test(seed_params(seed, folder, {}), values, tokenized, folder)
            runs.append({"seed": seed, **run_result(folder)})
        rows.append(
            {
                "values": values,
                "runs": runs,
                "mean_test_accuracy": statistics.mean(r["test_accuracy"] for r in runs),
            }
        )
    for row in rows:
        row["gain_points"] = round(
            100 * (row["mean_test_accuracy"] - rows[0]["mean_test_accuracy"]), 2
        )
    result = {
        "bench": "tune_headroom",
        "started": now.isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        "torch threads",
        "command": "bench/tune_headroom.py " + shlex.join(sys.argv[1:]),
        "data": str(base.data.source),
        "work": str(work.relative_to(ROOT)) if work.is_relative_to(ROOT) else str(work),
        "seeds": args.seeds,
        "configs": rows,
    }
    print(json.dumps(result, indent=1))
    record(result, args.results, args.json or json_path("tune_headroom", stamp, args.results))


if __name__ == "__main__":
    main()
