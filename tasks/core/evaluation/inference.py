"""Batched inference over a tokenized dataset, with the time it took."""

from __future__ import annotations

import time
from typing import Any

from tasks.core.data.batching import (
    inference_batches,
    model_columns,
    padding_collator,
    position_cap,
)
from tasks.core.progress import Progress


def predict(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    task: str,
    batch_size: int,
    precision: Any,
    max_tokens: int | None = None,
) -> tuple[list[Any], dict[str, float]]:
    """Class probabilities per example (text) or per sub-token (tokens), in dataset order,
    from length-sorted batches under the precision's autocast; and timing (``seconds``,
    ``samples_per_second``, real ``tokens_per_second``)."""
    import torch

    device = torch.device(precision.device)
    model.to(device)
    inputs = dataset.select_columns([c for c in model_columns(dataset) if c != "labels"])
    collate = padding_collator("text_classification", tokenizer, device.type)  # pads inputs only
    lengths = list(dataset["length"])
    batches = inference_batches(lengths, batch_size, max_tokens, position_cap(tokenizer))
    probabilities: list[Any] = [None] * len(lengths)
    tokens = 0
    started = time.perf_counter()
    # one read of the columns: row-by-row indexing is far slower
    columns = inputs.to_dict()
    progress = Progress(len(batches), "evaluate", unit="batch")
    predicted = 0
    with torch.inference_mode(), precision.autocast():
        for indices in batches:
            batch = collate([{c: values[i] for c, values in columns.items()} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits.float()
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
            tokens += int(batch["attention_mask"].sum())
            for row, i in enumerate(indices):
                if task == "text_classification":
                    probabilities[i] = probs[row]
                else:  # keep the unpadded positions only
                    probabilities[i] = probs[row, : lengths[i]]
            predicted += len(indices)
            progress.update(examples=predicted)
    progress.close()
    seconds = time.perf_counter() - started
    timing = {
        "inference_seconds": round(seconds, 4),
        "samples_per_second": round(len(lengths) / seconds, 2) if seconds > 0 else None,
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
    }
    return probabilities, timing
