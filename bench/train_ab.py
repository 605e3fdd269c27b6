"""Benchmark (not a test): the product's training path of one checkout, timed alone on one
dataset, for A/B runs of two checkouts interleaved on a shared, noisy machine (the full
``bench/throughput.py`` takes too long there to be run twice in one quiet window).

    .venv/bin/python bench/train_ab.py --tree /path/to/checkout --dataset sst2 --steps 10

Prints one JSON line: the dataset, the tree, real tokens/s and samples/s over the timed steps
(``bench/speed/training.train_product`` of that tree, so each tree times its own product).
``--cpu-time`` clocks the window in CPU seconds of this process (all its threads) instead of
wall seconds: on a machine shared with other jobs, wall time mostly measures the others.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tree", required=True, help="the checkout whose product is timed")
    p.add_argument("--dataset", default="sst2", choices=["sst2", "conll2003"])
    p.add_argument(
        "--shared", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cpu-time", action="store_true", help="clock CPU seconds, not wall")
    args = p.parse_args()
    tree = Path(args.tree).resolve()
    sys.path[:0] = [str(tree), str(tree / "bench")]
    from speed import clock
    from speed.data import bench_params, read_corpus, sample, tokenize_splits
    from speed.training import train_product

    import tasks  # noqa: F401 - offline, state inside the tree

    try:
        from tasks.core.pretrained.model import quiet_transformers
    except ImportError:  # a tree from before tasks/core's packages
        from tasks.core.model import quiet_transformers

    quiet_transformers()
    if args.cpu_time:  # the window's clock (speed.clock's Clock callback) counts CPU seconds
        clock.time = argparse.Namespace(perf_counter=time.process_time)
    options = argparse.Namespace(
        params=str(tree / "params.yaml"), batch_size=None, model=None, max_tokens=None
    )
    task = "text_classification" if args.dataset == "sst2" else "token_classification"
    params = bench_params(options, task)
    corpus = read_corpus(args.dataset, Path(args.shared), params)
    chosen = sample(corpus.train, args.examples, args.seed)
    small = chosen.head(64)
    with tempfile.TemporaryDirectory(dir=tree / ".state") as scratch:
        work = Path(scratch)
        tokenize_splits(
            params, {"train": chosen, "validation": small, "test": small}, work / "data"
        )
        row = train_product(
            params, work / "data" / "tokenized", work / "product", args.steps, args.warmup_steps
        )
    print(
        json.dumps(
            {
                "dataset": args.dataset,
                "tree": str(tree),
                "precision": row["precision"],
                "tokens_s": row["tokens"] / row["seconds"],
                "samples_s": row["samples"] / row["seconds"],
                "padded": row["padded"],
                "tokens": row["tokens"],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
