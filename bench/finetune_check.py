"""Check (not a test): a short real fine-tuning through the product's tokenize and train code on
an SST-2 sample; prints and writes one JSON line with the dev score, speed and batching.

    .venv/bin/python bench/finetune_check.py --model .state/gpu-carry/model \
        --shared ../shared/datasets --examples 8000 --max-tokens null --out ref.json
    python3 bench/finetune_check.py ... --reference ref.json --tolerance 1.5

``--reference``: compare the dev accuracy with a stored run's (e.g. the CPU path's on the same
sample and model); exit 1 when it differs by more than ``--tolerance`` points.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tasks  # noqa: E402,F401 - offline, state inside the project

SCRATCH = ROOT / ".state" / "tmp"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model.name_or_path")
    parser.add_argument("--shared", required=True, help="folder with sst2/train.tsv, dev.tsv")
    parser.add_argument("--examples", type=int, default=8000, help="train sample (0: all)")
    parser.add_argument("--dev", type=int, default=0, help="dev examples (0: all)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", default="null", help="null or a number")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--reference", default=None, help="JSON of a run to compare with")
    parser.add_argument("--tolerance", type=float, default=1.0, help="accuracy points")
    args = parser.parse_args()

    from speed.data import read_corpus, sample, tokenize_splits  # bench/speed/

    from tasks.core.config import load_params
    from tasks.core.pretrained.model import quiet_transformers
    from tasks.train import train

    quiet_transformers()
    budget = None if args.max_tokens == "null" else args.max_tokens
    budget = int(budget) if budget and budget.isdigit() else budget
    params = load_params(
        ROOT / "params.yaml",
        overrides={
            "task": "text_classification",
            "data.source": {"path": "bench-sample"},
            "model.name_or_path": args.model,
            "tokenize.max_length": 128,
            "train.epochs": args.epochs,
            "train.batch_size": args.batch_size,
            "train.max_tokens_per_batch": budget,
            "train.precision": args.precision,
            "train.resume": "never",
            "train.early_stopping_patience": 0,
            "train.seed": args.seed,
        },
    )
    corpus = read_corpus("sst2", Path(args.shared), params)
    chosen = corpus.train if not args.examples else sample(
        corpus.train, args.examples, args.seed
    )  # fmt: skip
    if args.dev:
        corpus.dev = corpus.dev.head(args.dev)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="finetune-check-", dir=SCRATCH))
    try:
        splits = {"train": chosen, "validation": corpus.dev, "test": corpus.dev.head(64)}
        tokenize_splits(params, splits, work / "data")
        started = time.perf_counter()
        metrics = train(params, work / "data" / "tokenized", work / "m", work / "r", work / "s")
        wall = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import torch
    import transformers

    best = metrics["best_validation"]
    result = {
        "examples": len(chosen),
        "dev": len(corpus.dev),
        "epochs": args.epochs,
        "device": metrics["device"],
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "precision": metrics["precision"],
        "batch_size": args.batch_size,
        "max_tokens_per_batch": metrics["max_tokens_per_batch"],
        "mean_batch_examples": metrics["mean_batch_examples"],
        "learning_rate": metrics["learning_rate"],
        "steps": metrics["global_steps"],
        "dev_accuracy": best["accuracy"],
        "dev_f1_macro": best["f1_macro"],
        "train_tokens_per_second": metrics["train_tokens_per_second"],
        "train_time_s": metrics["train_time_s"],
        "wall_s": round(wall, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    line = json.dumps(result)
    print(line, flush=True)
    if args.out:
        Path(args.out).write_text(line + "\n")
    if args.reference:
        reference = json.loads(Path(args.reference).read_text())
        gap = (result["dev_accuracy"] - reference["dev_accuracy"]) * 100
        ok = abs(gap) <= args.tolerance
        print(
            f"dev accuracy {result['dev_accuracy']:.4f} ({result['device']}, "
            f"{result['precision']}) vs reference {reference['dev_accuracy']:.4f} "
            f"({reference['device']}, {reference['precision']}): {gap:+.2f} points, tolerance "
            f"{args.tolerance:g}: {'met' if ok else 'NOT met'}",
            flush=True,
        )
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
