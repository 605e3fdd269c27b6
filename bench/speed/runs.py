"""One dataset end to end (tokenization, every training path, every inference path) and the
accuracy guard; each returns plain data (the JSON result's ``datasets`` and ``accuracy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .clock import free_memory
from .data import Corpus, bench_params, sample, time_tokenization, tokenize_splits
from .flops import Shape, compare, finish, model_shape
from .inference import infer_baseline, infer_product
from .training import BASELINES, fresh_model, train_baseline, train_product


def _tokenization(corpus: Corpus, args: Any, params: Any, tokenizer: Any, work: Path) -> tuple:
    """The encode speed on the train file and the tokenize stage on the sample: its data,
    manifest and the two timing rows."""
    rows = [
        time_tokenization(tokenizer, corpus, params.tokenize.max_length, args.tokenize_examples)
    ]
    chosen = sample(corpus.train, args.examples, args.seed)
    small = chosen.head(min(64, len(chosen)))  # validation/test: the stage needs them
    data, manifest, seconds = tokenize_splits(
        params, {"train": chosen, "validation": small, "test": small}, work / "data"
    )
    stage = sum(manifest["counts"].values())
    rows.append({"function": "tokenize() stage", "seconds": seconds, "sentences": stage})
    for row in rows:
        rate = row["sentences"] / row["seconds"]
        print(f"  tokenize {row['function']}: {rate:,.0f} sentences/s", flush=True)
    return data, manifest, rows


def _enough(corpus: Corpus, args: Any, tp: Any, examples: int) -> None:
    """Refuse a sample too small for the steps (an epoch end would fall inside the window)."""
    needed = (args.warmup_steps + args.steps) * tp.batch_size * tp.gradient_accumulation_steps
    if examples < needed:
        raise SystemExit(
            f"{corpus.name}: {examples} examples < {needed} needed for "
            f"{args.warmup_steps}+{args.steps} steps of {tp.batch_size} (one epoch, no repeats)"
        )


def _show(kind: str, rows: list[dict]) -> None:
    for row in rows:
        print(
            f"  {kind} {row['path']}: {row['tokens_s']:,.0f} real tokens/s, "
            f"{row['samples_s']:.1f} samples/s",
            flush=True,
        )


def _training(
    params: Any,
    data: Any,
    tokenizer: Any,
    source: Any,
    labels: list,
    args: Any,
    work: Path,
    shape: Shape,
    peaks: dict,
) -> list[dict]:
    """Every training path on the same tokenized sample, timed over the same steps."""
    steps, warmup = args.steps, args.warmup_steps
    tokenized = work / "data" / "tokenized"
    rows = [train_product(params, tokenized, work / "product", steps, warmup)]
    rows.append(train_product(params, tokenized, work / "product-b", steps, warmup, True))
    for kind in BASELINES:
        model = fresh_model(params, source, labels)
        row, _ = train_baseline(kind, params, data, tokenizer, model, work, steps, warmup)
        rows.append(row)
        del model
        free_memory()
    for row in rows:
        finish(row, shape, peaks, training=True)
    compare(rows)
    _show("train", rows)
    return rows


def _inference(
    params: Any,
    model: Any,
    tokenizer: Any,
    dataset: Any,
    task: str,
    batch: int,
    args: Any,
    shape: Shape,
    peaks: dict,
) -> list[dict]:
    """Every inference path over the whole sample, the same model."""
    from tasks.core.data.batching import token_budget
    from tasks.core.modeling.precision import choose_precision

    precision = choose_precision(params.train.precision)
    max_tokens = token_budget(params.evaluate.max_tokens_per_batch, precision.device, "inference")
    rows = [infer_product(model, tokenizer, dataset, task, batch, precision, max_tokens)]
    for kind in BASELINES:
        rows.append(
            infer_baseline(kind, model, tokenizer, dataset, batch, precision.device, args.seed)
        )
    lengths = list(dataset["length"])
    for row in rows:
        row.update(samples=len(lengths), tokens=sum(lengths), squares=sum(n * n for n in lengths))
        finish(row, shape, peaks, training=False)
    compare(rows)
    _show("infer", rows)
    return rows


def bench_dataset(corpus: Corpus, args: Any, peaks: dict[str, float], work: Path) -> dict:
    """Tokenization, training and inference of every path on one dataset."""
    from tasks.core.pretrained.model import load_tokenizer, resolve_model_source

    params = bench_params(args, corpus.task)
    tp = params.train
    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, work / "state", params.model.revision
    )
    tokenizer = load_tokenizer(source)
    print(f"\n== {corpus.name} ({corpus.task}), {len(corpus.train)} train examples", flush=True)
    data, manifest, tokenization = _tokenization(corpus, args, params, tokenizer, work)
    _enough(corpus, args, tp, len(data["train"]))
    labels = manifest["labels"]
    base = fresh_model(params, source, labels)  # also the inference model (weights don't matter)
    shape = model_shape(base)
    training = _training(params, data, tokenizer, source, labels, args, work, shape, peaks)
    batch = args.eval_batch_size or params.evaluate.batch_size
    inference = _inference(
        params, base.eval(), tokenizer, data["train"], corpus.task, batch, args, shape, peaks
    )
    lengths = list(data["train"]["length"])
    del base
    free_memory()
    return {
        "name": corpus.name,
        "task": corpus.task,
        "origin": corpus.origin,
        "examples": len(data["train"]),
        "mean_length": sum(lengths) / len(lengths),
        "params": shape.params,
        "layers": shape.layers,
        "hidden": shape.hidden,
        "batch": tp.batch_size,
        "eval_batch": batch,
        "training": training,
        "inference": inference,
        "tokenization": tokenization,
    }


def _dev_accuracy(data: Any, task: str, batch: int) -> Any:
    """A function: dev accuracy of a model at a precision (the evaluate stage's predict)."""
    import numpy as np

    from tasks.core.evaluation.inference import predict

    gold = np.asarray(data["validation"]["labels"])

    def accuracy(model: Any, tokenizer: Any, precision: Any) -> float:
        probabilities, _ = predict(model, tokenizer, data["validation"], task, batch, precision)
        return float((np.argmax(np.stack(probabilities), axis=1) == gold).mean())

    return accuracy


def _product_accuracy(params: Any, work: Path, steps: int, accuracy: Any, task: str) -> tuple:
    """The product trained ``steps`` steps: its timing row, accuracy at its precision and fp32."""
    from tasks.core.modeling.precision import Precision, choose_precision
    from tasks.core.pretrained.model import load_model

    row = train_product(params, work / "data" / "tokenized", work / "product", steps, 0)
    model, tokenizer = load_model(work / "product" / "model", task)
    precision = choose_precision(params.train.precision)
    fp32 = Precision(precision.device, "fp32")
    scores = accuracy(model, tokenizer, precision), accuracy(model, tokenizer, fp32)
    del model
    free_memory()
    return row, precision, *scores


def _default_accuracy(
    params: Any, data: Any, labels: list, work: Path, steps: int, accuracy: Any, precision: Any
) -> tuple[dict, float]:
    """Trainer defaults trained ``steps`` steps: its timing row and fp32 accuracy."""
    from tasks.core.modeling.precision import Precision
    from tasks.core.pretrained.model import load_tokenizer, resolve_model_source

    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, work / "state", params.model.revision
    )
    tokenizer = load_tokenizer(source)
    model = fresh_model(params, source, labels)
    row, trained = train_baseline("Trainer default", params, data, tokenizer, model, work, steps, 0)
    score = accuracy(trained.eval(), tokenizer, Precision(precision.device, "fp32"))
    del trained, model
    free_memory()
    return row, score


def accuracy_guard(corpus: Corpus, args: Any, work: Path) -> dict:
    """Dev accuracy after the same K steps: the product's path vs Trainer defaults."""
    params = bench_params(args, corpus.task)
    tp, steps = params.train, args.accuracy_steps
    chosen = sample(corpus.train, steps * tp.batch_size * tp.gradient_accumulation_steps, args.seed)
    dev = corpus.dev
    data, manifest, _ = tokenize_splits(
        params, {"train": chosen, "validation": dev, "test": dev.head(64)}, work / "data"
    )
    print(
        f"\n== accuracy guard: {steps} steps on {len(chosen)} {corpus.name} examples, "
        f"{len(dev)} dev",
        flush=True,
    )
    accuracy = _dev_accuracy(data, corpus.task, args.eval_batch_size or params.evaluate.batch_size)
    product_row, precision, product, product_fp32 = _product_accuracy(
        params, work, steps, accuracy, corpus.task
    )
    default_row, default = _default_accuracy(
        params, data, manifest["labels"], work, steps, accuracy, precision
    )
    result = {
        "corpus": corpus.name,
        "steps": steps,
        "examples": len(chosen),
        "dev": len(dev),
        "precision": precision.dtype,
        "product": product,
        "product_fp32": product_fp32,
        "default": default,
        "product_s": product_row["seconds"],
        "default_s": default_row["seconds"],
        "gap": (product - default) * 100,
    }
    print(
        f"  product {product:.4f} ({precision.dtype} inference; fp32 {product_fp32:.4f}), "
        f"Trainer default {default:.4f}: {result['gap']:+.2f} points",
        flush=True,
    )
    return result
