"""Training paths: the product's ``train()`` (its padding for the device, and the other) and
``transformers.Trainer`` as a careful user (best flags), by default, and padded to 128."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from unittest import mock

from .clock import cudnn_attention, free_memory, timed_trainer, window
from .data import FIXED_LENGTH

BEST = "Trainer best flags"
OTHER_PADDING = "product (other padding)"
BASELINES = (BEST, "Trainer default", "fixed-128")


def _product_batching(metrics: dict, params: Any, multiple_of_8: bool) -> str:
    """How the product cut its batches, for the table."""
    if metrics["max_tokens_per_batch"]:
        batches = f"<= {metrics['max_tokens_per_batch']} tokens"
    else:
        batches = "length-grouped" if params.train.group_by_length else "random"
    return f"{batches}, padded to {'multiples of 8' if multiple_of_8 else 'longest'}"


def train_product(
    params: Any, tokenized: Path, work: Path, steps: int, warmup: int, other_padding: bool = False
) -> dict:
    """The product's own ``train()``, its Trainer wrapped to stop after the steps
    (``other_padding``: multiples of 8 where the device pads to the longest and vice versa,
    the ablation of ``padding_collator``)."""
    import tasks.core.modeling.training as training
    import tasks.train as product
    from tasks.core.modeling.precision import choose_precision

    captured: list[Any] = []
    timed = timed_trainer(training.BatchedTrainer, warmup + steps, warmup, captured)
    own = training.padding_collator
    cuda = choose_precision(params.train.precision).device == "cuda"

    def flipped(task: str, tokenizer: Any, device: str) -> Any:
        return own(task, tokenizer, "cpu" if device == "cuda" else "cuda")

    with (
        mock.patch.object(training, "BatchedTrainer", timed),
        mock.patch.object(training, "padding_collator", flipped)
        if other_padding
        else contextlib.nullcontext(),
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
    row.update(
        path=OTHER_PADDING if other_padding else "product",
        precision=metrics["precision"],
        batching=_product_batching(metrics, params, cuda != other_padding),
        optimizer=str(trainer.args.optim.value),
    )
    captured.clear()
    del trainer
    free_memory()
    return row


def fresh_model(params: Any, source: Any, labels: list[str]) -> Any:
    """The start model exactly as ``train()`` builds it (same seed, head, method)."""
    import transformers

    from tasks.core.modeling.training import apply_method, build_model

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


def baseline_arguments(kind: str, params: Any, work: Path, max_steps: int) -> Any:
    """Default ``TrainingArguments`` but for the batch, the step count and no reporting; the
    best flags add mixed precision where the device has it and group_by_length."""
    from transformers import TrainingArguments

    from tasks.core.modeling.precision import choose_precision

    tp = params.train
    best = kind == BEST
    auto = choose_precision("auto")
    dtype = auto.dtype if best else "fp32"
    return TrainingArguments(
        output_dir=str(work / kind),
        per_device_train_batch_size=tp.batch_size * tp.gradient_accumulation_steps,
        max_steps=max_steps,
        seed=tp.seed,
        report_to="none",
        disable_tqdm=True,
        bf16=dtype == "bf16",
        fp16=dtype == "fp16",
        use_cpu=auto.device == "cpu",  # transformers refuses bf16 on a CPU without it
        **({"train_sampling_strategy": "group_by_length"} if best else {}),
    )


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
    from transformers import PrinterCallback, Trainer

    from tasks.core.data.batching import model_columns

    best = kind == BEST
    args = baseline_arguments(kind, params, work, warmup + steps)
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
