"""What the train stage and every tune trial share, so a trial trains exactly as train would:
the start model with a head for the labels, the training method, and the stock
``transformers.Trainer`` with its arguments and metrics.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from tasks.core.config import TrainParams
from tasks.core.data.batching import (
    LengthGroupedBatches,
    TokenBudgetBatches,
    check_budget,
    model_columns,
    padding_collator,
    position_cap,
    scaled_learning_rate,
)
from tasks.core.errors import StageError
from tasks.core.modeling import distributed
from tasks.core.modeling.metrics import entity_scores, text_scores, word_level_tags
from tasks.core.modeling.precision import Precision
from tasks.core.pretrained.model import TASK_HEADS, ModelSource, model_class


def head_labels(config: Any, task: str) -> list[str] | None:
    """The labels an existing head of ``task``'s kind predicts, in id order; else ``None``."""
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith(TASK_HEADS[task]) for a in architectures):
        return None
    id2label = {int(k): v for k, v in (config.id2label or {}).items()}
    return [id2label[i] for i in sorted(id2label)]


def head_parameter_names(model: Any) -> list[str]:
    """Parameters outside the encoder (``base_model_prefix``): the classification head."""
    prefix = f"{model.base_model_prefix}."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def _head_output(model: Any, num_labels: int) -> Any:
    """The head's last linear layer (one output row per label)."""
    base = getattr(model, model.base_model_prefix)
    inside = {id(m) for m in base.modules()}
    layers = [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and id(m) not in inside and m.out_features == num_labels
    ]
    if not layers:
        raise StageError(f"cannot find the classification layer of {type(model).__name__}")
    return layers[-1]


def build_model(
    task: str, source: ModelSource, labels: list[str], dropout: float | None
) -> tuple[Any, str]:
    """The start point with a head for ``labels``, and ``"kept"`` (its head predicts the same
    label set) or ``"new"`` (head initialised afresh; the caller seeds the RNG first)."""
    auto = model_class(task)
    # Never trust_remote_code: a model's own Python code is not run (tasks/core/pretrained/hub.py).
    config = AutoConfig.from_pretrained(source.model_dir, trust_remote_code=False)
    previous = head_labels(config, task)
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    keep = previous is not None and len(previous) == len(labels) and set(previous) == set(labels)
    if not keep:
        config = AutoConfig.from_pretrained(
            source.model_dir,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
            trust_remote_code=False,
        )
    if dropout is not None:
        for key, value in config.to_dict().items():
            if "dropout" in key and (value is None or isinstance(value, float)):
                setattr(config, key, dropout)
    try:
        model = auto.from_pretrained(
            source.model_dir, config=config, ignore_mismatched_sizes=True, trust_remote_code=False
        )
    except (OSError, ValueError, pickle.UnpicklingError) as exc:
        # UnpicklingError: torch's weights_only loader refused a pickle that runs code.
        raise StageError(f"cannot load a model from {source.model_dir}: {exc}") from None
    layer = _head_output(model, len(labels))
    with torch.no_grad():
        if keep:
            order = [previous.index(label) for label in labels]
            if order != list(range(len(labels))):  # same labels, other ids: reorder the rows
                layer.weight.copy_(layer.weight[order].clone())
                if layer.bias is not None:
                    layer.bias.copy_(layer.bias[order].clone())
            model.config.id2label, model.config.label2id = id2label, label2id
        else:
            # another label set's head of the same shape would load silently
            base = {id(m) for m in getattr(model, model.base_model_prefix).modules()}
            std = getattr(config, "initializer_range", 0.02)
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and id(module) not in base:
                    module.weight.normal_(0.0, std)
                    if module.bias is not None:
                        module.bias.zero_()
    return model, "kept" if keep else "new"


def apply_method(model: Any, task: str, train: TrainParams) -> Any:
    """``full``: train everything; ``head``: freeze the encoder; ``lora``: wrap in peft
    LoRA adapters (the head is trained in full through ``modules_to_save``)."""
    if train.method == "head":
        head = set(head_parameter_names(model))
        for name, parameter in model.named_parameters():
            parameter.requires_grad = name in head
    elif train.method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        prefix = model.base_model_prefix
        head_modules = sorted(
            name
            for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())
        )
        config = LoraConfig(
            task_type=TaskType.SEQ_CLS if task == "text_classification" else TaskType.TOKEN_CLS,
            r=train.lora.r,
            lora_alpha=train.lora.alpha,
            lora_dropout=train.lora.dropout,
            target_modules=train.lora.target_modules,
            modules_to_save=head_modules,
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            raise StageError(f"train.lora: {exc}") from None
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def budget_mean_batch(tp: TrainParams, lengths: list[int], tokenizer: Any) -> float | None:
    """Mean examples per batch under ``train.max_tokens_per_batch`` (``None`` without one);
    StageError when the budget cannot hold the longest example."""
    if tp.max_tokens_per_batch is None:
        return None
    cap, budget = position_cap(tokenizer), tp.max_tokens_per_batch
    check_budget(budget, lengths, cap, "train.max_tokens_per_batch")
    return len(lengths) / len(TokenBudgetBatches(lengths, budget, seed=0, cap=cap))


def training_arguments(
    tp: TrainParams,
    precision: Precision,
    output_dir: Path,
    *,
    best_metric: str | None,
    log_steps: bool,
    mean_batch: float | None = None,
) -> TrainingArguments:
    """The ``TrainingArguments`` of train and of every tune trial, from ``tp``.

    ``best_metric``: evaluate and checkpoint every epoch, load the best by it at the end
    (``None``, a tune trial: no evaluation schedule, no checkpoints). ``log_steps``: log every
    ``tp.logging_steps``. ``mean_batch`` (token budget): the learning rate is scaled to it.
    """
    logging = {"logging_strategy": "steps", "logging_steps": tp.logging_steps}
    several = precision.device == "cpu" and distributed.world_size() > 1
    learning_rate = tp.learning_rate
    if mean_batch is not None:
        learning_rate = scaled_learning_rate(tp.learning_rate, tp.batch_size, mean_batch)
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=tp.batch_size,
        per_device_eval_batch_size=tp.batch_size * 2,
        gradient_accumulation_steps=tp.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=tp.weight_decay,
        warmup_steps=float(tp.warmup_ratio),  # a float in [0, 1) is a ratio of all steps
        lr_scheduler_type=tp.scheduler,
        num_train_epochs=tp.epochs,
        max_grad_norm=tp.max_grad_norm,
        seed=tp.seed,
        data_seed=tp.seed,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        use_cpu=precision.device == "cpu",
        train_sampling_strategy="group_by_length" if tp.group_by_length else "random",
        report_to="none",  # MLflow logging is explicit, never Trainer's own callback
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # keeps "length": the sampler and the counts read it
        ddp_backend="gloo" if several else None,  # CPU processes under torchrun (train only)
        **_schedule(best_metric),
        **(logging if log_steps else {"logging_strategy": "no"}),
    )


def _schedule(best_metric: str | None) -> dict[str, Any]:
    """The evaluation and checkpoint arguments (see :func:`training_arguments`)."""
    if best_metric is None:
        return {"eval_strategy": "no", "save_strategy": "no"}
    return {
        "eval_strategy": "epoch",
        "save_strategy": "epoch",
        "save_total_limit": 2,  # the best checkpoint is always kept besides these
        "metric_for_best_model": best_metric,
        "greater_is_better": True,
        "load_best_model_at_end": True,
        "restore_callback_states_from_checkpoint": True,  # early-stopping counter
    }


class CountingCollator:
    """:func:`padding_collator` that counts training examples, real and padded tokens on the
    CPU (Trainer's ``include_num_input_tokens_seen`` syncs the GPU and has no padded count).
    Only rows with a ``length`` column (training rows) are counted."""

    def __init__(self, task: str, tokenizer: Any, device: str):
        self.pad = padding_collator(task, tokenizer, device)
        self.samples = self.tokens = self.padded = 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        lengths = [f.pop("length") for f in features if "length" in f]
        batch = self.pad(features)
        if lengths:
            self.samples += len(lengths)
            self.tokens += sum(lengths)
            self.padded += batch["input_ids"].numel()
        return batch


class SaveEvery(TrainerCallback):
    """A checkpoint every ``steps`` optimizer steps too (``load_best_model_at_end`` ties
    saving to the per-epoch evaluation schedule)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
        if state.global_step % self.steps == 0:
            control.should_save = True
        return control


class BatchedTrainer(Trainer):
    """``Trainer`` whose training batches come from a batch sampler: token budgets (transformers
    has none) or :class:`~tasks.core.data.batching.LengthGroupedBatches`."""

    def __init__(self, *args: Any, max_tokens: int | None, **kw: Any):
        super().__init__(*args, **kw)
        self.max_tokens = max_tokens

    def get_train_dataloader(self) -> Any:
        lengths, seed = list(self.train_dataset["length"]), self.args.seed
        if self.max_tokens:
            cap = position_cap(self.processing_class)
            batches = TokenBudgetBatches(lengths, self.max_tokens, seed=seed, cap=cap)
        elif self.args.train_sampling_strategy == "group_by_length":
            batches = LengthGroupedBatches(lengths, self.args.per_device_train_batch_size, seed)
        else:
            return super().get_train_dataloader()
        loader = DataLoader(
            self.train_dataset,
            batch_sampler=batches,
            collate_fn=self.data_collator,
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)


def make_trainer(
    task: str,
    model: Any,
    args: TrainingArguments,
    data: Any,
    tokenizer: Any,
    labels: list[str],
    callbacks: list[Any],
    max_tokens: int | None = None,
) -> BatchedTrainer:
    """The :class:`BatchedTrainer` of a run on ``data["train"]`` (with ``length``) and
    ``data["validation"]``, with a :class:`CountingCollator` and the task's metrics."""
    device = args.device.type
    return BatchedTrainer(
        model=model,
        args=args,
        train_dataset=data["train"].select_columns([*model_columns(data["train"]), "length"]),
        eval_dataset=data["validation"].select_columns(model_columns(data["validation"])),
        data_collator=CountingCollator(task, tokenizer, device),
        processing_class=tokenizer,
        compute_metrics=metrics_function(task, labels),
        preprocess_logits_for_metrics=predicted_ids,
        callbacks=callbacks,
        max_tokens=max_tokens,
    )


def metrics_function(task: str, labels: list[str]) -> Any:
    """Trainer's ``compute_metrics`` for ``task``."""

    def compute(prediction: Any) -> dict[str, float]:
        predicted, gold = prediction.predictions, prediction.label_ids
        if task == "text_classification":
            return text_scores(list(gold), list(predicted), labels)
        pairs = [word_level_tags(p, g, labels) for p, g in zip(predicted, gold, strict=True)]
        return entity_scores([g for g, _ in pairs], [p for _, p in pairs])

    return compute


def predicted_ids(logits: Any, labels: Any) -> Any:
    """Keep only predicted ids during evaluation (not all logits)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)
