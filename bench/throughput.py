"""Benchmark (not a test): training, inference and tokenization throughput of the product's
paths against the usual alternatives, measured side by side in one process.

Same model (``model.name_or_path``, resolved as the product does), same fixed random sample
of ``--examples`` training examples per dataset, same batch size and the same number of
optimizer steps for every path; the first ``--warmup-steps`` steps of each are not timed.

Training (real = non-padding tokens, the attention mask's sum):

- product: ``tasks.train.train()`` itself (its Trainer subclass, length-grouped sampler or
  token-budget batches, padding to buckets, the precision ``choose_precision`` picks, cuDNN
  attention off on CUDA), stopped after the steps;
- product (pad to longest): the same with the buckets switched off (the padding ablation);
- Trainer best flags: ``transformers.Trainer`` as a careful user sets it: bf16 autocast where
  the device has it (CUDA; a CPU with native bf16), ``train_sampling_strategy=
  "group_by_length"``, and on CUDA cuDNN attention off (it rebuilds a graph per new length);
- Trainer default: ``transformers.Trainer`` with default ``TrainingArguments`` (fp32, random
  batches, padded to the longest in the batch, torch's default attention backends);
- fixed-128: the tutorial style, every example padded to ``max_length`` 128, fp32.

Inference: ``tasks.evaluate.predict`` (sorted by length, buckets or token budget, autocast) vs
the best flags (sorted by length, padded to the longest, autocast), vs random order padded to
the longest, fp32, vs fixed 128, fp32. Tokenization: the tokenize stage's
``encode_texts`` / ``encode_words`` on the whole train file, and the ``tokenize()`` stage on the
sample. MFU: model FLOPs of the real tokens per second over the matmul peak measured in the same
run. ``--accuracy-steps K``: SST-2 dev accuracy of the product path and the Trainer-default path
after K steps each (slow). Prints the tables and appends them to ``bench/RESULTS.md``.

    .venv/bin/python bench/throughput.py --batch-size 32 --examples 2048 --steps 30 \
        --accuracy-steps 200
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import logging
import platform
import shlex
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from results import append_section  # noqa: E402 - bench/results.py

import tasks  # noqa: E402,F401 - offline, state and scratch inside the project
from tasks.config import load_params  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SHARED = ROOT.parent / "shared" / "datasets"
SCRATCH = ROOT / ".state" / "tmp" / "bench-throughput"
FIXED_LENGTH = 128  # the tutorial's padding="max_length"
# Issue 13's targets: on a GPU 2x the best flags, 3x the defaults, 25% MFU; on a CPU 1.2x the
# best flags; never slower than the defaults anywhere.
TARGETS = {
    "cuda": {"train_vs_best": 2.0, "train_vs_default": 3.0, "infer_vs_fixed": 3.0, "mfu": 0.25},
    "cpu": {"train_vs_best": 1.2, "train_vs_default": 1.0, "infer_vs_fixed": 3.0, "mfu": 0.40},
}
BEST = "Trainer best flags"
TASK_OF = {"sst2": "text_classification", "conll2003": "token_classification"}


# --- data -------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """One benchmark dataset: its train frame and (for the accuracy guard) its dev frame."""

    name: str
    task: str
    train: Any  # DataFrame: text,label or tokens,tags
    dev: Any | None
    origin: str


def read_corpus(name: str, shared: Path, params: Any) -> Corpus | None:
    """SST-2 or CoNLL-2003 from ``shared``, read with the prepare stage's own reader."""
    from tasks.sources import read_user_file

    if name == "sst2":
        data = params.data.model_copy(
            update={
                "format": "tsv",
                "text_column": "sentence",
                "label_column": "label",
                "group_column": None,
            }
        )
        train, dev = shared / "sst2" / "train.tsv", shared / "sst2" / "dev.tsv"
    else:
        conll = params.data.conll.model_copy(
            update={"token_column": 0, "tag_column": -1, "scheme": "iob2"}
        )
        data = params.data.model_copy(update={"format": "conll", "conll": conll})
        train, dev = shared / "conll2003" / "train.txt", shared / "conll2003" / "dev.txt"
    if not train.is_file():
        print(f"skipping {name}: {train} not found", flush=True)
        return None
    frame = read_user_file(train, data, TASK_OF[name])
    dev_frame = read_user_file(dev, data, TASK_OF[name]) if dev.is_file() else None
    label = {"sst2": "SST-2", "conll2003": "CoNLL-2003"}[name]
    return Corpus(label, TASK_OF[name], frame, dev_frame, f"`{_shown(train)}`")


def read_default_corpus() -> Corpus | None:
    """The project's default data (``data/prepared``), used when ``../shared`` is absent."""
    import pandas as pd

    prepared = ROOT / "data" / "prepared"
    train = prepared / "train.parquet"
    if not train.is_file():
        print(f"skipping: no shared datasets and no {train} (run `make run` first)", flush=True)
        return None
    frame = pd.read_parquet(train)
    task = "text_classification" if "text" in frame.columns else "token_classification"
    dev_path = prepared / "validation.parquet"
    dev = pd.read_parquet(dev_path) if dev_path.is_file() else None
    return Corpus("default data", task, frame, dev, f"`{_shown(train)}`")


def _shown(path: Path) -> str:
    """``path`` relative to the project (``../shared/...`` for the reference datasets)."""
    path = path.resolve()
    with contextlib.suppress(ValueError):
        return str(path.relative_to(ROOT))
    with contextlib.suppress(ValueError):
        return str(Path("..") / path.relative_to(ROOT.parent))
    return str(path)


def bench_params(args: Any, task: str) -> Any:
    """params.yaml for ``task``; every path sees the same sub-tokens (truncated at 128)."""
    overrides: dict[str, Any] = {
        "task": task,
        "train.resume": "never",  # a left-over scratch checkpoint must not be resumed
        "tokenize.max_length": FIXED_LENGTH,
        # The benchmark brings its own data: a built-in source of the other task would be
        # rejected by the params check, so name the benchmark's files instead.
        "data.source": {"path": "bench-sample"},
    }
    if args.batch_size:
        overrides["train.batch_size"] = args.batch_size
    if args.model:
        overrides["model.name_or_path"] = args.model
    if args.max_tokens:
        budget = None if args.max_tokens == "null" else args.max_tokens
        overrides["train.max_tokens_per_batch"] = int(budget) if str(budget).isdigit() else budget
    return load_params(args.params, overrides=overrides)


@contextlib.contextmanager
def cudnn_attention(enabled: bool) -> Any:
    """torch's cuDNN SDPA backend on (its default) or off, for one path (no-op on CPU)."""
    import torch

    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)


def sample(frame: Any, n: int, seed: int) -> Any:
    """A fixed random sample of ``n`` rows (all rows when there are fewer)."""
    return frame.sample(n=min(n, len(frame)), random_state=seed).reset_index(drop=True)


def tokenize_splits(params: Any, splits: dict[str, Any], work: Path) -> tuple[Any, dict, float]:
    """Run the product's tokenize stage on ``splits``; the datasets, manifest and its seconds."""
    from tasks.tokenize import load_tokenized, tokenize

    prepared = work / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    keep = ["text", "label"] if params.task == "text_classification" else ["tokens", "tags"]
    for split, frame in splits.items():
        frame[keep].to_parquet(prepared / f"{split}.parquet")
    started = time.perf_counter()
    tokenize(params, prepared, work / "tokenized", work / "tokenize.json", work / "state")
    seconds = time.perf_counter() - started
    data, manifest = load_tokenized(work / "tokenized")
    return data, manifest, seconds


# --- timing helpers ---------------------------------------------------------------------------


def sync() -> None:
    """Wait for queued GPU work (no-op on CPU) so that wall-clock times are complete."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def matmul_peak(device: str, size: int, repeats: int = 5, inner: int = 3) -> dict[str, float]:
    """Best FLOP/s of ``size``x``size`` matmuls, fp32 and bf16, on the current threads."""
    import torch

    peaks = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        sync()
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync()
            best = min(best, (time.perf_counter() - started) / inner)
        peaks[name] = 2 * size**3 / best
        del a, b
    return peaks


@dataclass(frozen=True)
class Shape:
    """What the FLOP formulas need: non-embedding parameters, layers, hidden size."""

    params: int
    layers: int
    hidden: int

    def flops(self, tokens: int, squares: int, training: bool) -> tuple[float, float]:
        """(2|6)·N·T, and the same plus attention (4|12)·L·d·Σ len² over real lengths."""
        factor = 3 if training else 1
        dense = 2 * factor * self.params * tokens
        return dense, dense + 4 * factor * self.layers * self.hidden * squares


def model_shape(model: Any) -> Shape:
    names = [(n, p.numel()) for n, p in model.named_parameters()]
    dense = sum(count for name, count in names if "embeddings" not in name)
    config = model.config
    return Shape(dense, config.num_hidden_layers, config.hidden_size)


# --- training ---------------------------------------------------------------------------------


def timed_trainer(base: type, max_steps: int, warmup: int, sink: list | None = None) -> type:
    """``base`` stopped after ``max_steps`` optimizer steps, with per-step clock and counts."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self, times: dict[int, float]):
            self.times = times

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            sync()
            self.times[0] = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in (warmup, max_steps):
                sync()  # only at the window's ends: no extra stalls inside it
            self.times[state.global_step] = time.perf_counter()

    class Timed(base):
        def __init__(self, *args: Any, **kw: Any):
            kw["args"].max_steps = max_steps
            super().__init__(*args, **kw)
            self.step_times: dict[int, float] = {}
            self.step_counts: list[tuple[Any, ...]] = []  # per micro-batch, tensors (no sync)
            self.add_callback(Clock(self.step_times))
            if sink is not None:
                sink.append(self)

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            mask = inputs["attention_mask"]
            real = mask.sum(dim=1)
            self.step_counts.append((mask.shape[0], mask.numel(), real.sum(), (real * real).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    return Timed


def window(trainer: Any, warmup: int, steps: int) -> dict[str, Any]:
    """Samples, tokens and seconds of the timed steps ``warmup+1 .. warmup+steps``."""
    per_step = trainer.args.gradient_accumulation_steps
    if trainer.state.global_step < warmup + steps:
        raise RuntimeError(f"only {trainer.state.global_step} of {warmup + steps} steps ran")
    counts = trainer.step_counts[warmup * per_step : (warmup + steps) * per_step]
    return {
        "steps": steps,
        "seconds": trainer.step_times[warmup + steps] - trainer.step_times[warmup],
        "samples": sum(c[0] for c in counts),
        "padded": sum(c[1] for c in counts),
        "tokens": sum(int(c[2]) for c in counts),
        "squares": sum(int(c[3]) for c in counts),
    }


def train_product(
    params: Any, tokenized: Path, work: Path, steps: int, warmup: int, buckets: bool = True
) -> dict:
    """The product's own ``train()``, its Trainer wrapped to stop after the steps
    (``buckets=False``: padding to the longest in the batch, the ablation)."""
    import tasks.modeling
    import tasks.train as product

    captured: list[Any] = []
    original = product.trainer_classes

    def patched() -> tuple[type, type, type]:
        measured, epoch_end, early_stopping = original()
        return timed_trainer(measured, warmup + steps, warmup, captured), epoch_end, early_stopping

    no_buckets = mock.patch.object(tasks.modeling, "padded_length", lambda n, cap=None: n)
    with (
        mock.patch.object(product, "trainer_classes", patched),
        contextlib.nullcontext() if buckets else no_buckets,
    ):
        metrics = product.train(
            params,
            tokenized_dir=tokenized,
            model_dir=work / "model",
            reports_dir=work / "reports",
            state_dir=work / "state",
        )
    trainer = captured[0]
    row = window(trainer, warmup, steps)
    if metrics["max_tokens_per_batch"]:
        batches = f"<= {metrics['max_tokens_per_batch']} tokens"
    else:
        batches = "length-grouped" if params.train.group_by_length else "random"
    row.update(
        path="product" if buckets else "product (pad to longest)",
        precision=metrics["precision"],
        batching=f"{batches}, padded to {'buckets' if buckets else 'longest'}",
        optimizer=str(trainer.args.optim.value),
    )
    captured.clear()
    del trainer
    free_memory()
    return row


def fresh_model(params: Any, source: Any, labels: list[str]) -> Any:
    """The start model exactly as ``train()`` builds it (same seed, head, method)."""
    import transformers

    from tasks.training import apply_method, build_model

    transformers.set_seed(params.train.seed)
    model, _ = build_model(params.task, source, labels, params.train.dropout)
    return apply_method(model, params.task, params.train)


def baseline_collator(task: str, tokenizer: Any, fixed: bool, labels: bool = True) -> Any:
    """Pad to the longest in the batch, or (``fixed``) every example to 128 tokens."""
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    pad = {"padding": "max_length", "max_length": FIXED_LENGTH} if fixed else {}
    if task == "token_classification" and labels:
        return DataCollatorForTokenClassification(tokenizer, **pad)
    return DataCollatorWithPadding(tokenizer, **pad)


def train_baseline(
    kind: str,
    params: Any,
    data: Any,
    tokenizer: Any,
    model: Any,
    work: Path,
    steps: int,
    warmup: int,
) -> tuple[dict, Any]:
    """``transformers.Trainer`` with default arguments (``fixed``: tutorial padding to 128;
    ``Trainer best flags``: mixed precision where the device has it, group_by_length)."""
    from transformers import PrinterCallback, Trainer, TrainingArguments

    from tasks.modeling import choose_precision, model_columns

    tp = params.train
    best = kind == BEST
    auto = choose_precision("auto")
    dtype = auto.dtype if best else "fp32"
    args = TrainingArguments(  # defaults but for the batch, the step count and no reporting
        output_dir=str(work / kind),
        per_device_train_batch_size=tp.batch_size * tp.gradient_accumulation_steps,
        max_steps=warmup + steps,
        seed=tp.seed,
        report_to="none",
        disable_tqdm=True,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu=auto.device == "cpu",  # transformers refuses bf16 on a CPU without it
        **({"train_sampling_strategy": "group_by_length"} if best else {}),
    )
    trainer = timed_trainer(Trainer, warmup + steps, warmup)(
        model=model,
        args=args,
        train_dataset=data["train"].select_columns(model_columns(data["train"])),
        data_collator=baseline_collator(params.task, tokenizer, fixed=kind == "fixed-128"),
    )
    trainer.remove_callback(PrinterCallback)  # the default progress bar is off: no log lines
    with cudnn_attention(not best):  # torch's default for the plain paths
        trainer.train()
    row = window(trainer, warmup, steps)
    padding = f"padded to {FIXED_LENGTH}" if kind == "fixed-128" else "padded to longest"
    row.update(
        path=kind,
        precision="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        batching=f"{'length-grouped' if best else 'random'}, {padding}",
        optimizer=str(args.optim.value),
    )
    trained = trainer.model
    del trainer
    free_memory()
    return row, trained


# --- inference --------------------------------------------------------------------------------


def padded_tokens(lengths: list[int], order: list[int], batch: int, fixed: bool) -> int:
    """Tokens the model sees when ``order`` is cut into batches (dynamic or fixed padding)."""
    total = 0
    for start in range(0, len(order), batch):
        chunk = order[start : start + batch]
        total += len(chunk) * (FIXED_LENGTH if fixed else max(lengths[i] for i in chunk))
    return total


def infer_product(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    task: str,
    batch: int,
    precision: Any,
    max_tokens: int | None,
) -> dict:
    """``tasks.evaluate.predict`` (after a warm-up call on its first two batches)."""
    from tasks.evaluate import predict
    from tasks.modeling import inference_batches, padded_length, position_cap

    warm = dataset.select(range(min(len(dataset), 2 * batch)))
    predict(model, tokenizer, warm, task, batch, precision, max_tokens)
    sync()
    started = time.perf_counter()
    predict(model, tokenizer, dataset, task, batch, precision, max_tokens)
    sync()
    seconds = time.perf_counter() - started
    lengths = list(dataset["length"])
    cap = position_cap(tokenizer)
    batches = inference_batches(lengths, batch, max_tokens, cap)
    size = f"<= {max_tokens} tokens" if max_tokens else f"{batch}"
    return {
        "path": "product",
        "precision": precision.dtype,
        "seconds": seconds,
        "batching": f"sorted by length, {size}, padded to buckets",
        "padded": sum(len(b) * padded_length(lengths[b[0]], cap) for b in batches),
    }


def infer_baseline(
    kind: str, model: Any, tokenizer: Any, dataset: Any, batch: int, device: str, seed: int
) -> dict:
    """Random order through a DataLoader, fp32; padded to the longest or to 128. The best
    flags: sorted by length (as Trainer's group_by_length evaluation), mixed precision."""
    import torch
    from torch.utils.data import DataLoader

    from tasks.modeling import choose_precision, model_columns, sorted_by_length

    fixed, best = kind == "fixed-128", kind == BEST
    precision = choose_precision("auto")
    inputs = dataset.select_columns([c for c in model_columns(dataset) if c != "labels"])
    collate = baseline_collator("text_classification", tokenizer, fixed, labels=False)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    if best:
        order = sorted_by_length(list(dataset["length"]))
    model.to(device)

    def run(indices: list[int]) -> None:
        loader = DataLoader(inputs, batch_size=batch, sampler=indices, collate_fn=collate)
        autocast = precision.autocast() if best else contextlib.nullcontext()
        with torch.inference_mode(), autocast, cudnn_attention(not best):
            for features in loader:
                features = {k: v.to(device) for k, v in features.items()}
                logits = model(**features).logits.float()
                torch.softmax(logits, dim=-1).cpu().numpy()

    run(order[: 2 * batch])  # warm-up
    sync()
    started = time.perf_counter()
    run(order)
    sync()
    padding = f"padded to {FIXED_LENGTH}" if fixed else "padded to longest"
    return {
        "path": kind,
        "precision": precision.dtype if best else "fp32",
        "seconds": time.perf_counter() - started,
        "batching": f"{'sorted by length' if best else 'random order'}, {padding}",
        "padded": padded_tokens(list(dataset["length"]), order, batch, fixed),
    }


# --- tokenization -----------------------------------------------------------------------------


def time_tokenization(tokenizer: Any, corpus: Corpus, max_length: int, limit: int | None) -> dict:
    """Sentences/s of the tokenize stage's encode function on the train file (no imports)."""
    from tasks.modeling import entity_type, iob2_tags
    from tasks.tokenize import encode_texts, encode_words

    frame = corpus.train if not limit else corpus.train.head(limit)
    if corpus.task == "text_classification":
        encode = encode_texts
        mapping = {label: i for i, label in enumerate(sorted({str(x) for x in frame["label"]}))}
    else:
        encode = encode_words
        kinds = {entity_type(str(t)) for tags in frame["tags"] for t in tags} - {None}
        mapping = {tag: i for i, tag in enumerate(iob2_tags(kinds))}
    encode(tokenizer, frame.head(256), mapping, max_length)  # warm-up
    started = time.perf_counter()
    encode(tokenizer, frame, mapping, max_length)
    seconds = time.perf_counter() - started
    return {"function": encode.__name__, "sentences": len(frame), "seconds": seconds}


# --- one dataset ------------------------------------------------------------------------------


def bench_dataset(corpus: Corpus, args: Any, peaks: dict[str, float], work: Path) -> dict:
    """Tokenization, training and inference of every path on one dataset."""
    from tasks.modeling import (
        choose_precision,
        load_tokenizer,
        resolve_model_source,
        token_budget,
    )

    params = bench_params(args, corpus.task)
    tp = params.train
    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, work / "state")
    tokenizer = load_tokenizer(source)
    print(f"\n== {corpus.name} ({corpus.task}), {len(corpus.train)} train examples", flush=True)

    tokenization = [
        time_tokenization(tokenizer, corpus, params.tokenize.max_length, args.tokenize_examples)
    ]
    chosen = sample(corpus.train, args.examples, args.seed)
    small = chosen.head(min(64, len(chosen)))  # validation/test: the stage needs them
    data, manifest, seconds = tokenize_splits(
        params, {"train": chosen, "validation": small, "test": small}, work / "data"
    )
    tokenization.append(
        {
            "function": "tokenize() stage",
            "seconds": seconds,
            "sentences": sum(manifest["counts"].values()),
        }
    )
    for row in tokenization:
        print(
            f"  tokenize {row['function']}: {row['sentences'] / row['seconds']:,.0f} sentences/s",
            flush=True,
        )

    needed = (args.warmup_steps + args.steps) * tp.batch_size * tp.gradient_accumulation_steps
    if len(data["train"]) < needed:
        raise SystemExit(
            f"{corpus.name}: {len(data['train'])} examples < {needed} needed for "
            f"{args.warmup_steps}+{args.steps} steps of {tp.batch_size} (one epoch, no repeats)"
        )
    labels = manifest["labels"]
    base = fresh_model(params, source, labels)  # also the inference model (weights don't matter)
    shape = model_shape(base)

    tokenized = work / "data" / "tokenized"
    training = [train_product(params, tokenized, work / "product", args.steps, args.warmup_steps)]
    training.append(
        train_product(
            params, tokenized, work / "product-b", args.steps, args.warmup_steps, buckets=False
        )
    )
    for kind in (BEST, "Trainer default", "fixed-128"):
        model = fresh_model(params, source, labels)
        row, _ = train_baseline(
            kind, params, data, tokenizer, model, work, args.steps, args.warmup_steps
        )
        training.append(row)
        del model
        free_memory()
    for row in training:
        finish(row, shape, peaks, training=True)
        print(
            f"  train {row['path']}: {row['tokens_s']:,.0f} real tokens/s, "
            f"{row['samples_s']:.1f} samples/s",
            flush=True,
        )

    precision = choose_precision(tp.precision)
    batch = args.eval_batch_size or params.evaluate.batch_size
    max_tokens = token_budget(params.evaluate.max_tokens_per_batch, precision.device, "inference")
    model = base.eval()
    inference = [
        infer_product(model, tokenizer, data["train"], corpus.task, batch, precision, max_tokens)
    ]
    for kind in (BEST, "Trainer default", "fixed-128"):
        inference.append(
            infer_baseline(
                kind, model, tokenizer, data["train"], batch, precision.device, args.seed
            )
        )
    lengths = list(data["train"]["length"])
    for row in inference:
        row.update(samples=len(lengths), tokens=sum(lengths), squares=sum(n * n for n in lengths))
        finish(row, shape, peaks, training=False)
        print(
            f"  infer {row['path']}: {row['tokens_s']:,.0f} real tokens/s, "
            f"{row['samples_s']:.1f} samples/s",
            flush=True,
        )
    del model, base
    free_memory()
    return {
        "corpus": corpus,
        "examples": len(data["train"]),
        "batch": tp.batch_size,
        "eval_batch": batch,
        "shape": shape,
        "training": training,
        "inference": inference,
        "tokenization": tokenization,
        "precision": precision,
        "mean_length": sum(lengths) / len(lengths),
    }


def finish(row: dict, shape: Shape, peaks: dict[str, float], training: bool) -> None:
    """Rates, padding share and MFU (over the peak of the path's own precision)."""
    seconds = row["seconds"]
    dense, with_attention = shape.flops(row["tokens"], row["squares"], training)
    peak = peaks["bf16" if row["precision"] in ("bf16", "fp16") else "fp32"]
    row.update(
        samples_s=row["samples"] / seconds,
        tokens_s=row["tokens"] / seconds,
        padding=1 - row["tokens"] / row["padded"],
        mfu=dense / seconds / peak,
        mfu_attention=with_attention / seconds / peak,
        mfu_bf16=dense / seconds / peaks["bf16"],
    )


# --- accuracy guard ---------------------------------------------------------------------------


def accuracy_guard(corpus: Corpus, args: Any, work: Path) -> dict:
    """Dev accuracy after the same K steps: the product's path vs Trainer defaults."""
    import numpy as np

    from tasks.evaluate import load_model, predict
    from tasks.modeling import Precision, choose_precision, load_tokenizer, resolve_model_source

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
    gold = np.asarray(data["validation"]["labels"])
    eval_batch = args.eval_batch_size or params.evaluate.batch_size

    def accuracy(model: Any, tokenizer: Any, precision: Any) -> float:
        probabilities, _ = predict(
            model, tokenizer, data["validation"], corpus.task, eval_batch, precision
        )
        return float((np.argmax(np.stack(probabilities), axis=1) == gold).mean())

    product_row = train_product(params, work / "data" / "tokenized", work / "product", steps, 0)
    model, tokenizer = load_model(work / "product" / "model", corpus.task)
    precision = choose_precision(tp.precision)
    fp32 = Precision(precision.device, "fp32")
    product = accuracy(model, tokenizer, precision)
    product_fp32 = accuracy(model, tokenizer, fp32)
    del model
    free_memory()

    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, work / "state")
    tokenizer = load_tokenizer(source)
    default_row, trained = train_baseline(
        "Trainer default",
        params,
        data,
        tokenizer,
        fresh_model(params, source, manifest["labels"]),
        work,
        steps,
        0,
    )
    default = accuracy(trained.eval(), tokenizer, fp32)
    del trained
    free_memory()
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


# --- report -----------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


def ratio(rows: list[dict], path: str, base: str) -> float:
    by_path = {row["path"]: row for row in rows}
    return by_path[path]["tokens_s"] / by_path[base]["tokens_s"]


def tables(result: dict) -> tuple[list[str], list[str]]:
    """Markdown lines for one dataset, and its target checks."""
    corpus = result["corpus"]
    lines = [
        f"### {corpus.name} ({corpus.task}): {result['examples']} examples from {corpus.origin}, "
        f"mean {result['mean_length']:.1f} real tokens; N = {result['shape'].params:,} "
        "non-embedding parameters",
        "",
        f"Training: batch {result['batch']}, timed steps per path: "
        f"{result['training'][0]['steps']}.",
        "",
        "| path | precision | batches | examples/step | s | samples/s | real tokens/s | padding "
        "| MFU 6N | MFU +attn | vs best flags | vs Trainer default | vs fixed-128 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["training"]:
        lines.append(
            f"| {row['path']} | {row['precision']} | {row['batching']} "
            f"| {row['samples'] / row['steps']:.0f} "
            f"| {row['seconds']:.1f} | {row['samples_s']:.1f} | {row['tokens_s']:,.0f} "
            f"| {row['padding']:.0%} | {row['mfu']:.1%} | {row['mfu_attention']:.1%} "
            f"| {ratio(result['training'], row['path'], BEST):.2f}x "
            f"| {ratio(result['training'], row['path'], 'Trainer default'):.2f}x "
            f"| {ratio(result['training'], row['path'], 'fixed-128'):.2f}x |"
        )
    lines += [
        "",
        f"Inference: batch {result['eval_batch']}, all {result['examples']} examples.",
        "",
        "| path | precision | batches | s | samples/s | real tokens/s | padding | MFU 2N "
        "| MFU +attn | vs best flags | vs Trainer default | vs fixed-128 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["inference"]:
        lines.append(
            f"| {row['path']} | {row['precision']} | {row['batching']} | {row['seconds']:.1f} "
            f"| {row['samples_s']:.1f} | {row['tokens_s']:,.0f} | {row['padding']:.0%} "
            f"| {row['mfu']:.1%} | {row['mfu_attention']:.1%} "
            f"| {ratio(result['inference'], row['path'], BEST):.2f}x "
            f"| {ratio(result['inference'], row['path'], 'Trainer default'):.2f}x "
            f"| {ratio(result['inference'], row['path'], 'fixed-128'):.2f}x |"
        )
    lines += ["", "| tokenization | sentences | s | sentences/s |", "|---|---|---|---|"]
    for row in result["tokenization"]:
        lines.append(
            f"| `{row['function']}` | {row['sentences']:,} | {row['seconds']:.2f} "
            f"| {row['sentences'] / row['seconds']:,.0f} |"
        )

    train, infer = result["training"], result["inference"]
    targets = TARGETS[result["precision"].device]
    vs_best = ratio(train, "product", BEST)
    vs_default = ratio(train, "product", "Trainer default")
    infer_best = ratio(infer, "product", BEST)
    infer_default = ratio(infer, "product", "Trainer default")
    infer_fixed = ratio(infer, "product", "fixed-128")
    buckets = ratio(train, "product", "product (pad to longest)")
    product = train[0]
    checks = [
        f"{corpus.name}: training {vs_best:.2f}x Trainer best flags (target >= "
        f"{targets['train_vs_best']:g}x): {verdict(vs_best >= targets['train_vs_best'])}",
        f"{corpus.name}: training {vs_default:.2f}x Trainer defaults (target >= "
        f"{targets['train_vs_default']:g}x): {verdict(vs_default >= targets['train_vs_default'])}",
        f"{corpus.name}: inference {infer_fixed:.2f}x fixed padding (target >= "
        f"{targets['infer_vs_fixed']:g}x): {verdict(infer_fixed >= targets['infer_vs_fixed'])}",
        f"{corpus.name}: inference {infer_best:.2f}x best flags, {infer_default:.2f}x defaults "
        f"(target: never slower than the defaults): {verdict(infer_default >= 1.0)}",
        f"{corpus.name}: buckets vs padding to the longest (same product otherwise): training "
        f"{buckets:.2f}x",
    ]
    if product["precision"] == "bf16":
        checks.append(
            f"{corpus.name}: training MFU {product['mfu_bf16']:.1%} of the bf16 peak (target >= "
            f"{targets['mfu']:.0%}): {verdict(product['mfu_bf16'] >= targets['mfu'])}"
        )
    else:
        checks.append(
            f"{corpus.name}: training MFU target (bf16) not applicable: the product trains in "
            f"{product['precision']} here (MFU {product['mfu']:.1%} of the fp32 peak)"
        )
    return lines, checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"), help="params.yaml")
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=["sst2", "conll2003"],
        choices=sorted(TASK_OF),
        help="from --shared",
    )
    parser.add_argument("--shared", default=str(SHARED), help="the reference datasets folder")
    parser.add_argument("--examples", type=int, default=2048, help="sampled train examples")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per path")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed first steps")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="train batch (default: train.batch_size)"
    )
    parser.add_argument(
        "--eval-batch-size",
        type=int,
        default=None,
        help="inference batch (default: evaluate.batch_size)",
    )
    parser.add_argument(
        "--tokenize-examples",
        type=int,
        default=None,
        help="sentences for the tokenization timing (default: all)",
    )
    parser.add_argument(
        "--matmul-size",
        type=int,
        default=None,
        help="peak matmul size (default: 2048 on CPU, 8192 on CUDA)",
    )
    parser.add_argument(
        "--accuracy-steps",
        type=int,
        default=0,
        help="also run the SST-2 accuracy guard with this many steps",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--model", default=None, help="model.name_or_path (default: params)")
    parser.add_argument(
        "--max-tokens",
        default=None,
        help="train.max_tokens_per_batch for the product: auto, null or a number (default: params)",
    )
    parser.add_argument("--seed", type=int, default=42, help="sample and batch-order seed")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to append to")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # Trainer default on a CPU

    from tasks.modeling import choose_precision, quiet_transformers
    from tasks.tracking import device_name

    quiet_transformers()
    import torch
    import transformers

    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.set_seed(args.seed)
    started = time.perf_counter()
    params = load_params(args.params)
    device = choose_precision(params.train.precision).device
    size = args.matmul_size or (8192 if device == "cuda" else 2048)
    peaks = matmul_peak(device, size)
    print(
        f"{device_name()}, torch threads {torch.get_num_threads()}: matmul {size}: fp32 "
        f"{peaks['fp32'] / 1e9:,.0f}, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s",
        flush=True,
    )

    shared = Path(args.shared)
    if shared.is_dir():
        corpora = [read_corpus(name, shared, params) for name in args.datasets]
    else:
        print(f"{shared} not found: using the project's default data instead", flush=True)
        corpora = [read_default_corpus()]
    corpora = [c for c in corpora if c is not None]
    if not corpora:
        raise SystemExit("no data to benchmark")

    stamp = datetime.datetime.now(datetime.UTC)
    scratch = SCRATCH / f"{stamp:%Y%m%dT%H%M%S}"
    results, guard = [], None
    try:
        for i, corpus in enumerate(corpora):
            results.append(bench_dataset(corpus, args, peaks, scratch / f"d{i}"))
        if args.accuracy_steps:
            text = [c for c in corpora if c.task == "text_classification" and c.dev is not None]
            if text:
                guard = accuracy_guard(text[0], args, scratch / "accuracy")
            else:
                print("accuracy guard skipped: no text dataset with a dev split", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - started

    lines, checks = [], []
    for result in results:
        more_lines, more_checks = tables(result)
        lines += [*more_lines, ""]
        checks += more_checks
    if guard is not None:
        lines += [
            f"Accuracy guard ({guard['steps']} steps each, batch {results[0]['batch']}, "
            f"{guard['examples']} {guard['corpus']} train examples sampled with seed "
            f"{args.seed}, {guard['dev']} dev examples):",
            "",
            "| path | dev accuracy | training s (all steps) |",
            "|---|---|---|",
            f"| product ({guard['precision']} inference, as the evaluate stage) "
            f"| {guard['product']:.4f} | {guard['product_s']:.0f} |",
            f"| product (fp32 inference) | {guard['product_fp32']:.4f} | |",
            f"| Trainer default (fp32) | {guard['default']:.4f} | {guard['default_s']:.0f} |",
            "",
        ]
        checks.append(
            f"accuracy: product {guard['gap']:+.2f} points vs Trainer defaults (target: at most "
            f"0.5 points lower): {verdict(guard['gap'] >= -0.5)}"
        )
    script = Path(sys.argv[0]).resolve().relative_to(ROOT)
    command = shlex.join([".venv/bin/python", str(script), *sys.argv[1:]])
    print("\n".join(["", *lines, *(f"- {c}" for c in checks), f"\nwall time {wall:.0f} s"]))

    shape = results[0]["shape"]
    tp = bench_params(args, results[0]["corpus"].task).train
    precision = results[0]["precision"]
    section = [
        f"## throughput: {stamp:%Y-%m-%d %H:%M} UTC",
        "",
        f"- machine: {device_name()}, {platform.platform()}; torch {torch.__version__} "
        f"(threads {torch.get_num_threads()}), transformers {transformers.__version__}",
        f"- command: `{command}` (wall time {wall:.0f} s)",
        f"- model `{params.model.name_or_path}`: {shape.layers} layers, hidden {shape.hidden} "
        f"(N, the non-embedding parameters with the task's head, per dataset below); product "
        f"precision {precision.dtype} on {precision.device}",
        f"- matmul peak ({size}x{size}, best of 5x3): fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s "
        f"(float32 matmul precision `{torch.get_float32_matmul_precision()}`), bf16 "
        f"{peaks['bf16'] / 1e9:,.0f} GFLOP/s",
        f"- product settings (params.yaml `train`, no tuned values): batch {tp.batch_size}, "
        f"learning rate {tp.learning_rate:g}, warmup ratio {tp.warmup_ratio:g}, precision "
        f"`{tp.precision}`, group_by_length {str(tp.group_by_length).lower()}, "
        f"max_tokens_per_batch "
        f"`{tp.max_tokens_per_batch}`; inference batch "
        f"{results[0]['eval_batch']}; `tokenize.max_length` pinned to {FIXED_LENGTH} for all paths",
        f"- method: sample of {args.examples} train examples per dataset (seed {args.seed}); "
        f"{args.warmup_steps} untimed warm-up steps then {args.steps} timed steps per path; "
        "real tokens = attention-mask sum. product = `tasks.train.train()` (its Trainer "
        "subclass, stopped by `max_steps`; `pad to longest`: the same with buckets off); "
        "Trainer best flags = `transformers.Trainer` with bf16/fp16 where the device has it "
        "natively, `train_sampling_strategy='group_by_length'`, cuDNN attention off on CUDA; "
        "Trainer default = `transformers.Trainer`, default "
        "`TrainingArguments` but batch size and steps, collator padding to the longest "
        "(token task: `DataCollatorForTokenClassification`); fixed-128 = the same, padded to "
        "128. Inference: `tasks.evaluate.predict` vs a DataLoader sorted by length with "
        "autocast (best flags), or in random order, fp32.",
        "- MFU = FLOPs of the real tokens per second / measured peak of the path's precision; "
        "training 6·N·T, inference 2·N·T (N non-embedding parameters, T real tokens); "
        "+attn adds 12·L·d·Σlen² (inference 4·L·d·Σlen²) over each sequence's real length.",
        "",
        *lines,
        *(f"- {c}" for c in checks),
        "",
    ]
    append_section(args.results, section)


if __name__ == "__main__":
    main()
