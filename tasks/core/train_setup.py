"""Setting up a train-stage run before its Trainer is built: the tokenizer matching the
tokenized data, the start model with its head and training method, the checkpoint folder of
the run and the checkpoint to resume from (an unfinished run's folder is cleared otherwise),
the precision and the batch plan, held together in one :class:`Run`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core import distributed
from tasks.core.checkpoints import last_complete_checkpoint, run_key
from tasks.core.config import Params
from tasks.core.model import load_matching_tokenizer, resolve_model_source
from tasks.core.precision import Precision, choose_precision
from tasks.core.training import apply_method, batch_plan, build_model, count_parameters

log = logging.getLogger("tasks.train")


@dataclass
class Run:
    """One training run, as :func:`set_up_run` set it up."""

    params: Params  # tuned values over params.yaml's
    data: Any  # the train and validation splits
    tokenizer: Any
    labels: list[str]
    metric: str  # picks the best epoch
    precision: Precision
    run_dir: Path  # this run's checkpoints (run_key)
    checkpoint: Path | None  # the one to resume from
    model: Any
    head: str  # kept | new
    parameters: tuple[int, int]  # trainable, total
    lengths: dict[str, list[int]]
    max_tokens: int | None
    learning_rate: float
    mean_batch: float


def set_up_run(
    params: Params, data: Any, manifest: dict[str, Any], tokenized_dir: Path, state_dir: Path
) -> Run:
    """Load the start model for the tokenized ``data`` (its ``manifest``), find the checkpoint
    to resume from and plan the batches."""
    import transformers

    tp, task = params.train, params.task
    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, state_dir, params.model.revision
    )
    tokenizer = load_matching_tokenizer(source, manifest, tokenized_dir)
    precision = choose_precision(tp.precision)

    run_dir = state_dir / "checkpoints" / run_key(params, source, precision, tokenized_dir)
    checkpoint = last_complete_checkpoint(run_dir) if tp.resume == "auto" else None
    if checkpoint is None and distributed.is_main_process():
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        log.info("resuming from %s", checkpoint)

    transformers.set_seed(tp.seed)  # the new head's initial weights depend on it
    model, head = build_model(task, source, manifest["labels"], tp.dropout)
    model = apply_method(model, task, tp)
    trainable, total = count_parameters(model)
    log.info(
        "%s: %s fine-tuning, %s of %s parameters trainable, head %s, %s on %s",
        source.spec, tp.method, f"{trainable:,}", f"{total:,}", head, precision.dtype,
        precision.device,
    )  # fmt: skip
    lengths = {s: list(data[s]["length"]) for s in ("train", "validation")}
    max_tokens, learning_rate, mean_batch = batch_plan(
        tp, lengths["train"], precision.device, tokenizer
    )
    if max_tokens:
        log.info(
            "batches of at most %d padded tokens (%.1f examples on average): learning rate "
            "%.3g (sqrt rule from %.3g at batch %d)",
            max_tokens, mean_batch, learning_rate, tp.learning_rate, tp.batch_size,
        )  # fmt: skip
    return Run(
        params=params,
        data=data,
        tokenizer=tokenizer,
        labels=manifest["labels"],
        metric=tp.resolved_metric(task),
        precision=precision,
        run_dir=run_dir,
        checkpoint=checkpoint,
        model=model,
        head=head,
        parameters=(trainable, total),
        lengths=lengths,
        max_tokens=max_tokens,
        learning_rate=learning_rate,
        mean_batch=mean_batch,
    )
