"""What the train stage and every tune trial share: the start model with a head for the
labels and the training method, the batch plan, the ``TrainingArguments``, the ``Trainer``
subclass with its callbacks, and the evaluation metrics Trainer computes.

One implementation for both, so a tune trial trains exactly as the train stage would
(``tasks/train.py`` adds checkpoints, resume and the reports; ``tasks/tuning/objective.py`` the
Optuna reporting).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from tasks.core import distributed
from tasks.core.batching import (
    LengthGroupedSampler,
    TokenBudgetBatches,
    check_budget,
    inference_batches,
    mean_batch_examples,
    position_cap,
    scaled_learning_rate,
    sorted_by_length,
    token_budget,
)
from tasks.core.config import TrainParams
from tasks.core.errors import StageError
from tasks.core.metrics import entity_scores, text_scores, word_level_tags
from tasks.core.model import TASK_HEADS, ModelSource, model_class
from tasks.core.precision import Precision

# --- model ------------------------------------------------------------------------------------


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
    import torch

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
    """Load the start point with a head for ``labels``.

    Returns:
        The model and ``"kept"`` (the start point's head predicts the same label set) or
        ``"new"`` (freshly initialised head; the caller seeds the RNG first).
    """
    import torch
    from transformers import AutoConfig

    auto = model_class(task)
    # Never trust_remote_code: a model's own Python code is not run (tasks/core/hub.py).
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
            # A head of another label set (or task) may have the same shape and would load
            # silently; initialise every head layer afresh instead.
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


def batch_plan(
    tp: TrainParams, lengths: list[int], device: str, tokenizer: Any
) -> tuple[int | None, float, float]:
    """(token budget or ``None``, learning rate, mean examples per batch) for training.

    Raises:
        StageError: the budget cannot hold the longest example.
    """
    max_tokens = token_budget(tp.max_tokens_per_batch, device, "train")
    check_budget(max_tokens, lengths, position_cap(tokenizer), "train.max_tokens_per_batch")
    mean = mean_batch_examples(lengths, tp.batch_size, max_tokens)
    if max_tokens is None:
        return None, tp.learning_rate, mean
    return max_tokens, scaled_learning_rate(tp.learning_rate, tp.batch_size, mean), mean


# --- the training loop ------------------------------------------------------------------------


def training_arguments(
    tp: TrainParams,
    precision: Precision,
    output_dir: Path,
    learning_rate: float,
    *,
    best_metric: str | None,
    log_steps: bool,
) -> Any:
    """The ``TrainingArguments`` of the train stage and of every tune trial: batches,
    optimizer, schedule, seeds and precision from ``tp`` (``learning_rate`` as ``batch_plan``
    scaled it); Trainer never reports to MLflow itself and drops no columns (the callers
    select them).

    Args:
        best_metric: the train stage's schedule: evaluate every epoch, checkpoint every
            ``tp.save_steps`` and track the best epoch by this metric (restored by the
            caller, so eval and save keep their own schedules). ``None``, a tune trial: no
            evaluation schedule (its reporter asks for evaluations at its own points) and
            no checkpoints.
        log_steps: log loss and learning rate every ``tp.logging_steps`` steps and count the
            real (non-padding) tokens seen, for the progress lines; else no logging.
    """
    from transformers import TrainingArguments

    schedule: dict[str, Any] = {"eval_strategy": "no", "save_strategy": "no"}
    if best_metric is not None:
        schedule = {
            "eval_strategy": "epoch",
            "save_strategy": "steps",  # plus one after every epoch (EpochEnd)
            "save_steps": tp.save_steps,
            "save_total_limit": 2,  # the best checkpoint is always kept besides these
            "metric_for_best_model": best_metric,
            "greater_is_better": True,
            "load_best_model_at_end": False,  # would force save and eval onto one schedule
            "restore_callback_states_from_checkpoint": True,  # early-stopping counter
        }
    logging: dict[str, Any] = {"logging_strategy": "no"}
    if log_steps:
        logging = {
            "logging_strategy": "steps",
            "logging_steps": tp.logging_steps,
            "include_num_input_tokens_seen": "non_padding",  # real tokens/s in progress lines
        }
    several = precision.device == "cpu" and distributed.world_size() > 1
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
        report_to="none",  # MLflow logging is explicit, never Trainer's own callback
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        ddp_backend="gloo" if several else None,  # CPU processes under torchrun (train only)
        **schedule,
        **logging,
    )


def trainer_classes() -> tuple[type, type, type]:
    """Trainer subclass and callbacks, defined lazily (importing transformers is slow)."""
    from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

    class MeasuredTrainer(Trainer):
        """Trainer with a resume-exact length-grouped sampler (or token-budget batches),
        length-sorted evaluation batches, and counters of real (non-padding) tokens.

        Earns its place against ``Trainer`` with ``group_by_length``: exact resume, token
        budgets (transformers has none) and the real-token counters the reports need; its
        speed is benchmarked against that path in bench/throughput.py ("Trainer best flags").
        """

        def __init__(
            self,
            *args: Any,
            lengths: dict[str, list[int]],
            group: bool,
            max_tokens: int | None = None,
            **kw: Any,
        ):
            super().__init__(*args, **kw)
            self.lengths, self.group, self.max_tokens = lengths, group, max_tokens
            self.samples_seen = self.tokens_seen = self.padded_tokens_seen = 0

        def _budget_loader(self, dataset: Any, batch_sampler: Any) -> Any:
            from torch.utils.data import DataLoader

            loader = DataLoader(
                dataset,
                batch_sampler=batch_sampler,
                collate_fn=self.data_collator,
                num_workers=self.args.dataloader_num_workers,
                pin_memory=self.args.dataloader_pin_memory,
            )
            return self.accelerator.prepare(loader)

        def get_train_dataloader(self) -> Any:
            if not self.max_tokens:
                return super().get_train_dataloader()
            cap = position_cap(self.processing_class)
            batches = TokenBudgetBatches(
                self.lengths["train"], self.max_tokens, seed=self.args.seed, cap=cap
            )
            return self._budget_loader(self.train_dataset, batches)

        def get_eval_dataloader(self, eval_dataset: Any = None) -> Any:
            if not self.max_tokens or eval_dataset is not None:
                return super().get_eval_dataloader(eval_dataset)
            batches = inference_batches(
                self.lengths["validation"],
                self.args.eval_batch_size,
                2 * self.max_tokens,  # no gradients: twice the training budget fits
                position_cap(self.processing_class),
            )
            return self._budget_loader(self.eval_dataset, batches)

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            return LengthGroupedSampler(
                self.lengths["train"],
                self.args.per_device_train_batch_size,
                seed=self.args.seed,
                group=self.group,
            )

        def _get_eval_sampler(self, eval_dataset: Any) -> Any:
            return sorted_by_length(self.lengths["validation"])

        def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
            self.samples_seen += int(inputs["input_ids"].shape[0])
            self.padded_tokens_seen += int(inputs["input_ids"].numel())
            self.tokens_seen += int(inputs["attention_mask"].sum())
            return super().training_step(model, inputs, num_items_in_batch)

    class EpochEnd(TrainerCallback):
        """Checkpoint after every epoch's evaluation as well (besides every ``save_steps``),
        so the best epoch is on disk and a resume never repeats an evaluated epoch; sums
        the time spent evaluating (excluded from training throughput)."""

        def __init__(self) -> None:
            self.eval_seconds = 0.0

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> Any:
            control.should_save = True
            return control

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None, **kw: Any):
            # The validation line itself is the progress module's (one line per epoch).
            self.eval_seconds += float((metrics or {}).get("eval_runtime", 0.0))

    class EarlyStopping(EarlyStoppingCallback):
        """transformers' early stopping (its counter is saved in checkpoints); the best
        checkpoint is restored by :func:`train`, so its load_best_model_at_end warning is
        moot."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            return None

    return MeasuredTrainer, EpochEnd, EarlyStopping


def metrics_function(task: str, labels: list[str]) -> Any:
    """Trainer's ``compute_metrics`` for ``task``: text scores, or seqeval entity scores on
    word-level tags."""

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
