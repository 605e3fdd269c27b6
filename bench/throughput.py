"""Benchmark (not a test): training, inference and tokenization throughput of the product's
paths against the usual alternatives, measured side by side in one process.

Same model (``model.name_or_path``, resolved as the product does), same fixed random sample
of ``--examples`` training examples per dataset, same batch size and the same number of
optimizer steps for every path; the first ``--warmup-steps`` steps of each are not timed.

Training (real = non-padding tokens, the attention mask's sum):

- product: ``tasks.train.train()`` itself (the stock Trainer with shuffled length-grouped
  batches or opt-in token budgets, padding for the device: multiples of 8 on CUDA, the longest
  on a CPU, the precision ``choose_precision`` picks, cuDNN attention off on CUDA), stopped
  after the steps;
- product (other padding): the same with the device's padding reversed (the ablation);
- Trainer best flags: ``transformers.Trainer`` as a careful user sets it: bf16 autocast where
  the device has it (CUDA; a CPU with native bf16), ``train_sampling_strategy=
  "group_by_length"``, and on CUDA cuDNN attention off (it rebuilds a graph per new length);
- Trainer default: ``transformers.Trainer`` with default ``TrainingArguments`` (fp32, random
  batches, padded to the longest in the batch, torch's default attention backends);
- fixed-128: the tutorial style, every example padded to ``max_length`` 128, fp32.

Inference: ``tasks.core.evaluation.inference.predict`` (sorted by length, padded for the device,
autocast) vs
the best flags (sorted by length, padded to the longest, autocast), vs random order padded to
the longest, fp32, vs fixed 128, fp32. Tokenization: the tokenize stage's
``encode_texts`` / ``encode_words`` on the whole train file, and the ``tokenize()`` stage on the
sample. MFU: model FLOPs of the real tokens per second over the matmul peak measured in the same
run. ``--accuracy-steps K``: SST-2 dev accuracy of the product path and the Trainer-default path
after K steps each (slow). Prints the tables, writes the run's JSON result (``--json``;
default ``bench/results/throughput-<UTC stamp>.json``, or beside ``--results``) and appends
its rendered section (``bench/render.py``) to ``--results`` (``bench/RESULTS.md``). The parts
live in ``bench/speed/``; this file is the command line.

    .venv/bin/python bench/throughput.py --batch-size 32 --examples 2048 --steps 30 \
        --accuracy-steps 200
"""

from __future__ import annotations

import argparse
import datetime
import logging
import platform
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from render import throughput_body  # noqa: E402 - bench/render.py
from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py
from speed.clock import matmul_peak  # noqa: E402
from speed.data import (  # noqa: E402 - bench/speed/
    FIXED_LENGTH,
    TASK_OF,
    bench_params,
    read_corpus,
    read_default_corpus,
)
from speed.runs import accuracy_guard, bench_dataset  # noqa: E402
from speed.targets import TARGETS, accuracy_check, dataset_checks  # noqa: E402

import tasks  # noqa: E402,F401 - offline, state and scratch inside the project
from tasks.core.config import load_params  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
SCRATCH = ROOT / ".state" / "tmp" / "bench-throughput"


def parser() -> argparse.ArgumentParser:
    """The command line (``bench/gpu_check.sh`` passes these flags)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = p.add_argument
    add("--params", default=str(ROOT / "params.yaml"), help="params.yaml")
    add(
        "--datasets",
        nargs="+",
        default=["sst2", "conll2003"],
        choices=sorted(TASK_OF),
        help="from --shared",
    )
    add("--shared", default=str(SHARED), help="the reference datasets folder")
    add("--examples", type=int, default=2048, help="sampled train examples")
    add("--steps", type=int, default=30, help="timed optimizer steps per path")
    add("--warmup-steps", type=int, default=2, help="untimed first steps")
    add("--batch-size", type=int, default=None, help="train batch (default: train.batch_size)")
    add(
        "--eval-batch-size",
        type=int,
        default=None,
        help="inference batch (default: evaluate.batch_size)",
    )
    add(
        "--tokenize-examples",
        type=int,
        default=None,
        help="sentences for the tokenization timing (default: all)",
    )
    add(
        "--matmul-size",
        type=int,
        default=None,
        help="peak matmul size (default: 2048 on CPU, 8192 on CUDA)",
    )
    add(
        "--accuracy-steps",
        type=int,
        default=0,
        help="also run the SST-2 accuracy guard with this many steps",
    )
    add("--threads", type=int, default=None, help="torch threads (default: all)")
    add("--model", default=None, help="model.name_or_path (default: params)")
    add(
        "--max-tokens",
        default=None,
        help="train.max_tokens_per_batch for the product: null or a number (default: params)",
    )
    add("--seed", type=int, default=42, help="sample and batch-order seed")
    add_arguments(p, "throughput")
    return p


def corpora(args: Any, params: Any) -> list:
    """The datasets to measure: ``--datasets`` from ``--shared``, else the project's data."""
    shared = Path(args.shared)
    if shared.is_dir():
        found = [read_corpus(name, shared, params) for name in args.datasets]
    else:
        print(f"{shared} not found: using the project's default data instead", flush=True)
        found = [read_default_corpus()]
    found = [c for c in found if c is not None]
    if not found:
        raise SystemExit("no data to benchmark")
    return found


def measure(args: Any, found: list, peaks: dict, scratch: Path) -> tuple[list, dict | None]:
    """Every dataset's result and the accuracy guard's (``--accuracy-steps``), in scratch."""
    results, guard = [], None
    try:
        for i, corpus in enumerate(found):
            results.append(bench_dataset(corpus, args, peaks, scratch / f"d{i}"))
        if args.accuracy_steps:
            text = [c for c in found if c.task == "text_classification" and c.dev is not None]
            if text:
                guard = accuracy_guard(text[0], args, scratch / "accuracy")
            else:
                print("accuracy guard skipped: no text dataset with a dev split", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return results, guard


def machine() -> dict:
    """The device, OS and library versions the run had."""
    import torch
    import transformers

    from tasks.core.tracking import device_name

    return {
        "device": device_name(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def settings(args: Any, task: str) -> dict:
    """The product's params.yaml ``train`` settings the run used (no tuned values)."""
    tp = bench_params(args, task).train
    keys = ("batch_size", "learning_rate", "warmup_ratio", "precision", "group_by_length")
    return {
        **{key: getattr(tp, key) for key in keys},
        "max_tokens_per_batch": tp.max_tokens_per_batch,
        "max_length": FIXED_LENGTH,
    }


def result_of(args: Any, run: dict) -> dict:
    """The run's JSON result: what ran where, every dataset's rows, the target checks."""
    datasets, guard, device = run["datasets"], run["guard"], run["precision"].device
    checks = [check for dataset in datasets for check in dataset_checks(dataset, device)]
    if guard is not None:
        checks.append(accuracy_check(guard))
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    return {
        "bench": "throughput",
        "started": run["started"].isoformat(timespec="seconds"),
        "wall_s": run["wall"],
        "command": shlex.join([".venv/bin/python", str(script), *sys.argv[1:]]),
        "machine": machine(),
        "model": run["model"],
        "precision": {"device": device, "dtype": run["precision"].dtype},
        "peak": {"size": run["size"], **run["peaks"]},
        "settings": settings(args, datasets[0]["task"]),
        "method": {
            key: getattr(args, key) for key in ("examples", "seed", "warmup_steps", "steps")
        },
        "targets": TARGETS[device],
        "datasets": datasets,
        "accuracy": guard,
        "checks": checks,
    }


def main() -> None:
    args = parser().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # Trainer default on a CPU

    from tasks.core.modeling.precision import choose_precision
    from tasks.core.pretrained.model import quiet_transformers
    from tasks.core.tracking import device_name

    quiet_transformers()
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    started = time.perf_counter()
    params = load_params(args.params)
    precision = choose_precision(params.train.precision)
    size = args.matmul_size or (8192 if precision.device == "cuda" else 2048)
    peaks = matmul_peak(precision.device, size)
    print(
        f"{device_name()}, torch threads {torch.get_num_threads()}: matmul {size}: fp32 "
        f"{peaks['fp32'] / 1e9:,.0f}, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s",
        flush=True,
    )
    found = corpora(args, params)
    stamp = datetime.datetime.now(datetime.UTC)
    datasets, guard = measure(args, found, peaks, SCRATCH / f"{stamp:%Y%m%dT%H%M%S}")
    run = {
        "started": stamp,
        "wall": time.perf_counter() - started,
        "datasets": datasets,
        "guard": guard,
        "precision": precision,
        "size": size,
        "peaks": peaks,
        "model": params.model.name_or_path,
    }
    result = result_of(args, run)
    print("\n".join(["", *throughput_body(result), f"\nwall time {result['wall_s']:.0f} s"]))
    target = args.json or json_path("throughput", f"{stamp:%Y%m%dT%H%M%S}", args.results)
    record(result, args.results, target)


if __name__ == "__main__":
    main()
