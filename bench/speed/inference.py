"""Inference paths: ``tasks.core.evaluation.inference.predict`` vs a plain DataLoader (sorted by
length with
autocast: the best flags; random order, fp32; padded to 128)."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .clock import cudnn_attention, sync
from .data import FIXED_LENGTH
from .training import BEST, baseline_collator


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
    """``tasks.core.evaluation.inference.predict`` (after a warm-up call on its first two
    batches)."""
    from tasks.core.data.batching import inference_batches, position_cap
    from tasks.core.evaluation.inference import predict

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
    eights = precision.device == "cuda"  # tasks.core.data.batching.padding_collator
    width = (lambda n: -(-n // 8) * 8) if eights else (lambda n: n)
    return {
        "path": "product",
        "precision": precision.dtype,
        "seconds": seconds,
        "batching": f"sorted by length, {size}, padded to {'8s' if eights else 'longest'}",
        "padded": sum(len(b) * width(max(lengths[i] for i in b)) for b in batches),
    }


def _loader_pass(model: Any, inputs: Any, collate: Any, batch: int, device: str) -> Any:
    """A function that predicts ``indices`` of ``inputs`` through a DataLoader (no grad)."""
    import torch
    from torch.utils.data import DataLoader

    def run(indices: list[int], autocast: Any) -> None:
        loader = DataLoader(inputs, batch_size=batch, sampler=indices, collate_fn=collate)
        with torch.inference_mode(), autocast:
            for features in loader:
                features = {k: v.to(device) for k, v in features.items()}
                logits = model(**features).logits.float()
                torch.softmax(logits, dim=-1).cpu().numpy()

    return run


def infer_baseline(
    kind: str, model: Any, tokenizer: Any, dataset: Any, batch: int, device: str, seed: int
) -> dict:
    """Random order through a DataLoader, fp32; padded to the longest or to 128. The best
    flags: sorted by length (as Trainer's group_by_length evaluation), mixed precision."""
    import torch

    from tasks.core.data.batching import model_columns, sorted_by_length
    from tasks.core.modeling.precision import choose_precision

    fixed, best = kind == "fixed-128", kind == BEST
    precision = choose_precision("auto")
    inputs = dataset.select_columns([c for c in model_columns(dataset) if c != "labels"])
    collate = baseline_collator("text_classification", tokenizer, fixed, labels=False)
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    if best:
        order = sorted_by_length(list(dataset["length"]))
    model.to(device)
    run = _loader_pass(model, inputs, collate, batch, device)

    def autocast() -> Any:
        return precision.autocast() if best else contextlib.nullcontext()

    with cudnn_attention(not best):
        run(order[: 2 * batch], autocast())  # warm-up
        sync()
        started = time.perf_counter()
        run(order, autocast())
        sync()
        seconds = time.perf_counter() - started
    padding = f"padded to {FIXED_LENGTH}" if fixed else "padded to longest"
    return {
        "path": kind,
        "precision": precision.dtype if best else "fp32",
        "seconds": seconds,
        "batching": f"{'sorted by length' if best else 'random order'}, {padding}",
        "padded": padded_tokens(list(dataset["length"]), order, batch, fixed),
    }
