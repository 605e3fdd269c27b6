"""Benchmark: int8 dynamic quantization (``predict --quantize``) against fp32 CPU inference.

Fine-tunes the default encoder briefly on an SST-2 train sample with the product's tokenize and
train code, then scores the SST-2 dev sentences (held out) with the fp32 model and with its
int8 copy (tasks/commands/quantize.py), side by side in one process: the same batches, the
two models alternating ``--repeats`` times; the median speed of each. Prints its JSON result,
writes it (``--json``; default ``bench/results/quantize-<UTC stamp>.json``) and appends its rendered
section (``bench/render.py``) to bench/RESULTS.md.

    .venv/bin/python bench/quantize.py --shared ../shared/datasets --examples 2000
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from results import add_arguments, json_path, record  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state inside the project

SCRATCH = ROOT / ".state" / "tmp"


def train_briefly(args: argparse.Namespace, work: Path):
    """The product's tokenize + train on an SST-2 sample; (model dir, dev frame, train metrics)."""
    from speed.data import read_corpus, sample, tokenize_splits  # bench/speed/

    from tasks.core.config import load_params
    from tasks.core.pretrained.model import quiet_transformers
    from tasks.train import train

    quiet_transformers()
    params = load_params(
        ROOT / "params.yaml",
        overrides={
            "task": "text_classification",
            "data.source": {"path": "bench-sample"},
            "model.name_or_path": args.model,
            "tokenize.max_length": 128,
            "train.epochs": 1,
            "train.resume": "never",
            "train.early_stopping_patience": 0,
            "train.seed": args.seed,
        },
    )
    corpus = read_corpus("sst2", Path(args.shared), params)
    if corpus is None:
        raise SystemExit(f"no SST-2 under {args.shared}")
    chosen = sample(corpus.train, args.examples, args.seed)
    splits = {"train": chosen, "validation": corpus.dev.head(200), "test": corpus.dev.head(64)}
    tokenize_splits(params, splits, work / "data")
    metrics = train(params, work / "data" / "tokenized", work / "m", work / "r", work / "s")
    return work / "m", corpus.dev, metrics


def batches(tokenizer, texts: list[str], size: int) -> list[dict]:
    """Fixed batches (sorted by length, as a server batching requests would), tokenized once."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = [order[i : i + size] for i in range(0, len(order), size)]
    return [
        (chunk, tokenizer([texts[i] for i in chunk], padding=True, truncation=True,
                          max_length=128, return_tensors="pt"))
        for chunk in chunks
    ]  # fmt: skip


def predict_all(
    model, prepared: list, n: int, bf16: bool = False
) -> tuple[list[int], float, float]:
    """Predicted class ids (in text order), the wall seconds and the CPU seconds (all threads
    of this process) it took; ``bf16``: under CPU bf16 autocast, as evaluate runs when
    train.precision resolves to bf16. CPU seconds are less disturbed by other jobs sharing the
    cores than wall seconds."""
    import torch

    predicted = [0] * n
    started, cpu = time.perf_counter(), time.process_time()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    with torch.inference_mode(), autocast:
        for chunk, batch in prepared:
            for i, label in zip(chunk, model(**batch).logits.argmax(-1).tolist(), strict=True):
                predicted[i] = label
    return predicted, time.perf_counter() - started, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--model", default="default", help="model.name_or_path to fine-tune")
    parser.add_argument("--examples", type=int, default=2000, help="SST-2 train sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    add_arguments(parser, "quantize")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tasks.commands.quantize import is_quantized, quantize_model
    from tasks.core.tracking import device_name

    SCRATCH.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="quantize-bench-", dir=SCRATCH))
    try:
        started = time.perf_counter()
        model_dir, dev, train_metrics = train_briefly(args, work)
        train_s = time.perf_counter() - started
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        fp32 = AutoModelForSequenceClassification.from_pretrained(model_dir).float().eval()
        int8 = quantize_model(fp32)
        assert is_quantized(int8)
        label2id = fp32.config.label2id
        texts, gold = dev["text"].tolist(), [label2id[str(g)] for g in dev["label"]]
        prepared = batches(tokenizer, texts, args.batch_size)
        predict_all(fp32, prepared[:2], len(texts))  # warm-up of both
        predict_all(int8, prepared[:2], len(texts))
        variants = (("fp32", fp32, False), ("int8", int8, False), ("bf16", fp32, True))
        seconds = {name: [] for name, _, _ in variants}
        cpu_seconds = {name: [] for name, _, _ in variants}
        predictions = {}
        for _ in range(args.repeats):
            for name, model, bf16 in variants:
                predictions[name], took, cpu = predict_all(model, prepared, len(texts), bf16)
                seconds[name].append(took)
                cpu_seconds[name].append(cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def accuracy(predicted: list[int]) -> float:
        return sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold)

    speed = {k: len(texts) / statistics.median(v) for k, v in seconds.items()}
    cpu_speed = {k: len(texts) / statistics.median(v) for k, v in cpu_seconds.items()}
    agree = sum(a == b for a, b in zip(predictions["fp32"], predictions["int8"], strict=True))
    result = {
        "train_examples": args.examples,
        "train_s": round(train_s, 1),
        "train_precision": train_metrics["precision"],
        "dev_examples": len(texts),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "fp32_texts_per_s": round(speed["fp32"], 1),
        "int8_texts_per_s": round(speed["int8"], 1),
        "speedup": round(speed["int8"] / speed["fp32"], 2),
        "speedup_cpu_time": round(cpu_speed["int8"] / cpu_speed["fp32"], 2),
        "bf16_speedup_cpu_time": round(cpu_speed["bf16"] / cpu_speed["fp32"], 2),
        "texts_per_cpu_s": {k: round(v, 1) for k, v in cpu_speed.items()},
        "bf16_autocast_texts_per_s": round(speed["bf16"], 1),
        "fp32_accuracy": round(accuracy(predictions["fp32"]), 4),
        "int8_accuracy": round(accuracy(predictions["int8"]), 4),
        "accuracy_delta_points": round(
            (accuracy(predictions["int8"]) - accuracy(predictions["fp32"])) * 100, 2
        ),
        "bf16_accuracy": round(accuracy(predictions["bf16"]), 4),
        "agreement": round(agree / len(texts), 4),
        "fp32_seconds": [round(s, 3) for s in seconds["fp32"]],
        "int8_seconds": [round(s, 3) for s in seconds["int8"]],
        "bf16_seconds": [round(s, 3) for s in seconds["bf16"]],
        "torch": torch.__version__,
        "engine": torch.backends.quantized.engine,
    }
    result.update(
        bench="quantize",
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=device_name(),
        platform=platform.platform(),
        model=args.model,
    )
    print(json.dumps(result), flush=True)
    stamp = f"{datetime.datetime.fromisoformat(result['started']):%Y%m%dT%H%M%S}"
    record(result, args.results, args.json or json_path("quantize", stamp, args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
