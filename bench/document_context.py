"""Benchmark (not a test): does document context pay on CoNLL-2003? Test entity F1 with
``tokenize.context_tokens`` 0 (sentences alone) and N (N sub-tokens of the neighbouring
sentences of the same document on each side), the same train values otherwise.

The conll2003 preset's params (``presets/conll2003.yaml``) with tuning off, its data read from
``../shared/datasets/conll2003``, and ``--set`` overrides; for each context size, in one process
on the product's own stage functions: tokenize, train, evaluate (the test split). Stores the
JSON result (``bench/results/document_context-<UTC stamp>.json``) and appends its section to
RESULTS.md.

    .venv/bin/python bench/document_context.py --context 0 64 --set train.epochs=3
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state inside the project

WORK = ROOT / ".state" / "bench" / "document_context"
CONLL = ROOT.parent / "shared" / "datasets" / "conll2003"


def preset_params(overrides: dict, work: Path):
    """params.yaml + the conll2003 preset + ``overrides``: tuning off, the data from
    ``../shared``, tracking and state inside ``work``."""
    import yaml

    from tasks.core.config import load_params

    preset = yaml.safe_load((ROOT / "presets" / "conll2003.yaml").read_text())["params"]
    files = {split: str(CONLL / f"{name}.txt") for split, name in
             (("train", "train"), ("validation", "dev"), ("test", "test"))}  # fmt: skip
    return load_params(
        ROOT / "params.yaml",
        overrides={
            **preset,
            "data.source": files,
            "tune.enabled": False,
            "train.resume": "never",
            "tracking.uri": f"sqlite:///{work / 'mlflow.db'}",
            **overrides,
        },
    )


def run_context(context: int, overrides: dict, work: Path) -> dict:
    """Tokenize with ``context`` sub-tokens a side, train, score the test split."""
    from tasks.core.data.tokenizing import tokenize
    from tasks.core.evaluation.scoring import evaluate
    from tasks.prepare import prepare
    from tasks.train import train

    params = preset_params({**overrides, "tokenize.context_tokens": context}, work)
    prepared = work / "prepared"
    if not (prepared / "summary.json").exists():
        prepare(params, prepared, ROOT / "data" / "raw")
    run = work / f"context-{context}"
    tokenized, reports = run / "tokenized", run / "reports"
    manifest = tokenize(params, prepared, tokenized, reports / "tokenize.json", work / "state")
    trained = train(params, tokenized, run / "model", reports, work / "state")
    evaluate(params, tokenized, run / "model", reports)
    scores = json.loads((reports / "metrics.json").read_text())
    splits = manifest["splits"]
    return {
        "context_tokens": context,
        "max_length": manifest["max_length"],
        "mean_length": {s: splits[s]["token_length"]["mean"] for s in splits},
        "context": {s: splits[s].get("context") for s in splits},
        "test_entity_f1": scores["f1_micro"],
        "test_precision": scores["precision_micro"],
        "test_recall": scores["recall_micro"],
        "per_type_f1": {k: round(v["f1"], 4) for k, v in scores["per_type"].items()},
        "validation_entity_f1": trained["best_validation_metric"],
        "best_epoch": trained["best_epoch"],
        "train_s": trained["train_time_s"],
        "train_tokens_per_second": trained["train_tokens_per_second"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=int, nargs="+", default=[0, 64])
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="params overrides (YAML values) over the preset, e.g. train.epochs=3",
    )  # fmt: skip
    add_arguments(parser, "document_context")
    args = parser.parse_args()

    import torch
    import yaml

    from tasks.core.pretrained.model import quiet_transformers

    quiet_transformers()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    now = datetime.datetime.now(datetime.UTC)
    stamp = f"{now:%Y%m%dT%H%M%S}"
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    work = WORK / stamp
    runs = [run_context(context, overrides, work) for context in args.context]
    train = preset_params(overrides, work).train
    result = {
        "bench": "document_context",
        "started": now.isoformat(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} "
        f"torch threads",
        "platform": platform.platform(),
        "command": "bench/document_context.py " + shlex.join(sys.argv[1:]),
        "overrides": overrides,
        "train": {k: getattr(train, k) for k in ("learning_rate", "batch_size", "epochs")},
        "work": str(work.relative_to(ROOT)),
        "runs": runs,
    }
    print(json.dumps(result, indent=1))
    record(result, args.results, args.json or json_path("document_context", stamp, args.results))


if __name__ == "__main__":
    main()
