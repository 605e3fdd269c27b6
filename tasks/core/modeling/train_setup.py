"""Setting up a train-stage run before its Trainer is built: tokenizer, start model, precision,
checkpoint folder and resume point, held in one :class:`Run`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers

from tasks.core.config import Params
from tasks.core.modeling import distributed
from tasks.core.modeling.checkpoints import last_complete_checkpoint, run_key
from tasks.core.modeling.precision import Precision, choose_precision
from tasks.core.modeling.training import (
    apply_method,
    budget_mean_batch,
    build_model,
    count_parameters,
)
from tasks.core.pretrained.model import load_matching_tokenizer, resolve_model_source

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
    model: Any
    head: str  # kept | new
    parameters: tuple[int, int]  # trainable, total
    mean_batch: float | None  # examples per batch under train.max_tokens_per_batch


def set_up_run(
    params: Params, data: Any, manifest: dict[str, Any], tokenized_dir: Path, state_dir: Path
) -> Run:
    """Load the start model for the tokenized ``data`` and name the run's checkpoint folder;
    StageError when the start point cannot be loaded or a token budget is too small."""
    examples = len(data["train"])
    tp = params.train.with_epochs_for(examples, distributed.world_size())
    if tp.epochs != params.train.epochs:
        log.info("train.epochs auto: %d for %s training examples", tp.epochs, f"{examples:,}")
    params, task = params.model_copy(update={"train": tp}), params.task
    source = resolve_model_source(
        params.model.name_or_path, params.tracking.uri, state_dir, params.model.revision
    )
    tokenizer = load_matching_tokenizer(source, manifest, tokenized_dir)
    precision = choose_precision(tp.precision)
    run_dir = state_dir / "checkpoints" / run_key(params, source, precision, tokenized_dir)
    mean_batch = budget_mean_batch(tp, list(data["train"]["length"]), tokenizer)
    transformers.set_seed(tp.seed)  # the new head's initial weights depend on it
    model, head = build_model(task, source, manifest["labels"], tp.dropout)
    model = apply_method(model, task, tp)
    trainable, total = count_parameters(model)
    log.info(
        "%s: %s fine-tuning, %s of %s parameters trainable, head %s, %s on %s",
        source.spec, tp.method, f"{trainable:,}", f"{total:,}", head, precision.dtype,
        precision.device,
    )  # fmt: skip
    return Run(
        params=params,
        data=data,
        tokenizer=tokenizer,
        labels=manifest["labels"],
        metric=tp.resolved_metric(task),
        precision=precision,
        run_dir=run_dir,
        model=model,
        head=head,
        parameters=(trainable, total),
        mean_batch=mean_batch,
    )


def resume_point(run: Run) -> Path | None:
    """The checkpoint to resume from (``train.resume: auto``); without one, the run's folder
    is cleared (rank 0). Call it holding the run's lock."""
    checkpoint = None
    if run.params.train.resume == "auto":
        checkpoint = last_complete_checkpoint(run.run_dir)
    if checkpoint is None and distributed.is_main_process():
        shutil.rmtree(run.run_dir, ignore_errors=True)
    elif checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    return checkpoint
