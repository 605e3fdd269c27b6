"""Stage ``train``: fine-tune the encoder on the tokenized train split, pick the best epoch
on validation.

Reads ``task``, ``model.name_or_path``, ``tracking.uri`` and ``train`` from ``params.yaml``
and ``data/tokenized/``; when ``tune.enabled``, the values in ``reports/best_params.json`` (the
tune stage's best trial) replace the ``train`` keys they name (``config.apply_tuned_params``).
Writes ``models/model/`` (``save_pretrained`` layout: safetensors weights, tokenizer,
``id2label``/``label2id`` in the config, ``training_params.json`` with the train values used
and their source), ``reports/train_history.csv``
(loss and learning rate per logging step), ``reports/validation_history.csv`` (validation
metrics per epoch) and ``reports/train_metrics.json``.

Start point: the default encoder, a local model directory, or a registered model
(``models:/NAME@champion``). A start point whose classification head already predicts the
same label set keeps its head (rows reordered if needed); otherwise a new head is made.

Methods: ``full`` (all weights), ``head`` (encoder frozen), ``lora`` (peft adapters, merged
into the saved model). transformers' ``Trainer`` runs the loop (mixed precision, gradient
accumulation, clipping, schedules, checkpoint/resume with RNG and optimizer state are all
solved there); this module adds the parts it lacks: a resume-exact length-grouped sampler,
token-budget batches (``train.max_tokens_per_batch``), per-epoch checkpoints, best-epoch
restore without forcing eval and save onto one schedule, and measurements of real
(non-padding) throughput.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import pickle
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import typer

from tasks import distributed, progress, tracking
from tasks.cli import stage_command
from tasks.config import (
    BEST_PARAMS_FILE,
    DEFAULT_PARAMS,
    Params,
    TrainParams,
    apply_tuned_params,
    load_params,
    require_tracked_inputs,
)
from tasks.environment import PROJECT_ROOT, STATE_DIR
from tasks.errors import StageError
from tasks.metrics import entity_scores, text_scores, word_level_tags
from tasks.modeling import (
    TASK_HEADS,
    LengthGroupedSampler,
    ModelSource,
    Precision,
    TokenBudgetBatches,
    check_budget,
    choose_precision,
    inference_batches,
    load_matching_tokenizer,
    make_collator,
    mean_batch_examples,
    model_class,
    model_columns,
    position_cap,
    quiet_transformers,
    replace_dir,
    resolve_model_source,
    scaled_learning_rate,
    sorted_by_length,
    token_budget,
    write_json,
)
from tasks.tokenize import TOKENIZED_DIR, load_tokenized

log = logging.getLogger(__name__)
MODEL_DIR = PROJECT_ROOT / "models" / "model"
REPORTS_DIR = PROJECT_ROOT / "reports"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
HISTORY_FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm")

app = typer.Typer(add_completion=False, help=__doc__)


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
    config = AutoConfig.from_pretrained(source.model_dir)
    previous = head_labels(config, task)
    id2label = dict(enumerate(labels))
    label2id = {label: i for i, label in enumerate(labels)}
    keep = previous is not None and len(previous) == len(labels) and set(previous) == set(labels)
    if not keep:
        config = AutoConfig.from_pretrained(
            source.model_dir, num_labels=len(labels), id2label=id2label, label2id=label2id
        )
    if dropout is not None:
        for key, value in config.to_dict().items():
            if "dropout" in key and (value is None or isinstance(value, float)):
                setattr(config, key, dropout)
    try:
        model = auto.from_pretrained(source.model_dir, config=config, ignore_mismatched_sizes=True)
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


# --- checkpoints ------------------------------------------------------------------------------


def run_key(params: Params, source: ModelSource, precision: Precision, tokenized_dir: Path) -> str:
    """Hash of everything that shapes the training run (not ``train.resume``).

    Checkpoints live in ``.state/checkpoints/<key>``, outside every DVC out: DVC deletes a
    stage's outs before it re-runs the stage, which would throw away the very checkpoints
    a resume needs. Keying the directory by the inputs means a checkpoint is only ever
    resumed into the same run; changed data or params start afresh.
    """
    digest = hashlib.sha256()
    spec = {
        "task": params.task,
        "train": params.train.model_dump(mode="json", exclude={"resume"}),
        "model": [source.spec, source.registry_version],
        "precision": [precision.device, precision.dtype],
    }
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for path in sorted(Path(tokenized_dir).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(tokenized_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was completely written; half-written ones (the process
    was killed while saving) are removed. ``trainer_state.json`` is written last."""
    if not run_dir.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT.match(p.name))
    )
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


# --- the training loop ------------------------------------------------------------------------


def _trainer_classes() -> tuple[type, type, type]:
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


def _compute_metrics(task: str, labels: list[str]) -> Any:
    def compute(prediction: Any) -> dict[str, float]:
        predicted, gold = prediction.predictions, prediction.label_ids
        if task == "text_classification":
            return text_scores(list(gold), list(predicted), labels)
        pairs = [word_level_tags(p, g, labels) for p, g in zip(predicted, gold, strict=True)]
        return entity_scores([g for g, _ in pairs], [p for _, p in pairs])

    return compute


def _argmax(logits: Any, labels: Any) -> Any:
    """Keep only predicted ids during evaluation (not all logits)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def _restore_best(model: Any, checkpoint: Path) -> None:
    """Load the weights of the best epoch's checkpoint into ``model``."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            model, load_file(checkpoint / "adapter_model.safetensors")
        )
        unexpected = result.unexpected_keys
    else:
        result = model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        unexpected = result.unexpected_keys
        if result.missing_keys:
            raise StageError(f"{checkpoint}: best checkpoint lacks {result.missing_keys[:5]}")
    if unexpected:
        raise StageError(f"{checkpoint}: best checkpoint has unexpected weights {unexpected[:5]}")


def train(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Fine-tune, restore the best validation epoch, save the model and the reports.

    Args:
        params: validated parameters (``task``, ``model``, ``tracking``, ``train``).
        tokenized_dir: output of the tokenize stage.
        model_dir: receives the fine-tuned model (replaced whole at the end).
        reports_dir: receives ``train_history.csv``, ``validation_history.csv`` and
            ``train_metrics.json``.
        state_dir: ``checkpoints/<run key>`` (for resume) and the registry cache.

    Returns:
        The content of ``train_metrics.json``.
    """
    import transformers
    from transformers import TrainingArguments

    started = time.perf_counter()
    quiet_transformers()
    # Tuned values (reports/best_params.json, when tune.enabled) over params.yaml's train.
    params, provenance = apply_tuned_params(params, Path(reports_dir) / BEST_PARAMS_FILE)
    tp, task = params.train, params.task
    if provenance["params_source"] == "tune":
        log.info("train values from tuning (trial %s): %s", provenance["best_trial"],
                 provenance["tuned_params"])  # fmt: skip
    data, manifest = load_tokenized(tokenized_dir)
    if manifest["task"] != task:
        raise StageError(
            f"{tokenized_dir} holds {manifest['task']} data but task is {task} (re-run tokenize)"
        )
    for split in ("train", "validation"):
        if len(data[split]) == 0:
            raise StageError(f"{tokenized_dir}: the {split} split is empty")
    source = resolve_model_source(params.model.name_or_path, params.tracking.uri, state_dir)
    tokenizer = load_matching_tokenizer(source, manifest, tokenized_dir)
    labels: list[str] = manifest["labels"]
    metric = tp.resolved_metric(task)
    precision = choose_precision(tp.precision)

    run_dir = Path(state_dir) / "checkpoints" / run_key(params, source, precision, tokenized_dir)
    checkpoint = last_complete_checkpoint(run_dir) if tp.resume == "auto" else None
    if checkpoint is None and distributed.is_main_process():
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        log.info("resuming from %s", checkpoint)

    transformers.set_seed(tp.seed)  # the new head's initial weights depend on it
    model, head = build_model(task, source, labels, tp.dropout)
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

    args = TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=tp.batch_size,
        per_device_eval_batch_size=tp.batch_size * 2,
        gradient_accumulation_steps=tp.gradient_accumulation_steps,
        learning_rate=learning_rate,
        weight_decay=tp.weight_decay,
        warmup_steps=float(tp.warmup_ratio),  # a float in [0, 1) is a ratio of all steps
        lr_scheduler_type=tp.scheduler,
        num_train_epochs=tp.epochs,
        max_grad_norm=tp.max_grad_norm,
        eval_strategy="epoch",
        save_strategy="steps",  # plus one after every epoch (EpochEnd)
        save_steps=tp.save_steps,
        save_total_limit=2,  # the best checkpoint is always kept besides these
        metric_for_best_model=metric,
        greater_is_better=True,
        load_best_model_at_end=False,  # would force save and eval onto one schedule
        restore_callback_states_from_checkpoint=True,  # early-stopping counter
        logging_strategy="steps",
        logging_steps=tp.logging_steps,
        seed=tp.seed,
        data_seed=tp.seed,
        bf16=precision.dtype == "bf16",
        fp16=precision.dtype == "fp16",
        use_cpu=precision.device == "cpu",
        report_to="none",  # MLflow logging is explicit, never Trainer's own callback
        disable_tqdm=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # columns are selected below
        include_num_input_tokens_seen="non_padding",  # real tokens/s in the progress lines
        ddp_backend="gloo" if precision.device == "cpu" and distributed.world_size() > 1 else None,
    )
    trainer_cls, epoch_end_cls, early_stopping_cls = _trainer_classes()
    epoch_end = epoch_end_cls()
    callbacks = [epoch_end, tracking.live_training_metrics()]
    if tp.early_stopping_patience > 0:
        callbacks.append(early_stopping_cls(early_stopping_patience=tp.early_stopping_patience))
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data["train"].select_columns(model_columns(data["train"])),
        eval_dataset=data["validation"].select_columns(model_columns(data["validation"])),
        data_collator=make_collator(task, tokenizer),
        processing_class=tokenizer,
        compute_metrics=_compute_metrics(task, labels),
        preprocess_logits_for_metrics=_argmax,
        callbacks=callbacks,
        lengths=lengths,
        group=tp.group_by_length,
        max_tokens=max_tokens,
    )
    progress.install(trainer, "train")  # step/total, loss, tokens/s, ETA; no raw dicts
    resumed_step = None
    if checkpoint is not None:
        resumed_step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - train_started - epoch_end.eval_seconds
    seen = _summed_over_processes(
        trainer, [trainer.samples_seen, trainer.tokens_seen, trainer.padded_tokens_seen]
    )
    samples_seen, tokens_seen, padded_tokens_seen = seen

    state = trainer.state
    best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    if best is not None and best.is_dir():
        _restore_best(trainer.model, best)
    final = trainer.model
    if hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()  # LoRA weights folded in: a plain model again

    history, validation = _histories(state.log_history)
    best_row = next((r for r in validation if r["step"] == state.best_global_step), None)
    if best_row is None and validation:
        best_row = max(validation, key=lambda r: r[metric])
    metrics = {
        "metric": metric,
        "best_validation_metric": best_row[metric] if best_row else None,
        "best_validation": {k: v for k, v in (best_row or {}).items() if k not in ("step",)},
        "best_epoch": best_row["epoch"] if best_row else None,
        "epochs_run": round(float(state.epoch or 0), 4),
        "epochs_planned": tp.epochs,
        "stopped_early": bool(state.epoch is not None and state.epoch < tp.epochs - 1e-6),
        "global_steps": state.global_step,
        "resumed_from_step": resumed_step,
        "train_examples": len(data["train"]),
        "max_tokens_per_batch": max_tokens,
        "mean_batch_examples": round(mean_batch, 2),
        "learning_rate": learning_rate,
        "train_samples_per_second": _rate(samples_seen, train_seconds),
        "train_tokens_per_second": _rate(tokens_seen, train_seconds),
        "padding_share": round(1 - tokens_seen / padded_tokens_seen, 4)
        if padded_tokens_seen
        else None,
        "train_time_s": round(train_seconds, 2),
        "eval_time_s": round(epoch_end.eval_seconds, 2),
        "wall_time_s": None,  # filled in below
        "device": precision.device,
        "precision": precision.dtype,
        "method": tp.method,
        "head": head,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "seed": tp.seed,
        "processes": distributed.world_size(),
        "params_source": provenance["params_source"],  # tune | params.yaml
        "tuned_params": provenance["tuned_params"],
    }

    if not distributed.is_main_process():
        return metrics  # rank 0 writes the model and the reports
    model_dir = Path(model_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    tmp.chmod(0o755)
    try:
        final.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # The train values this model was trained with, and where they came from.
        write_json(
            tmp / "training_params.json", {**provenance, "train": tp.model_dump(mode="json")}
        )
        replace_dir(tmp, model_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    reports_dir = Path(reports_dir)
    _write_csv(reports_dir / "train_history.csv", history, HISTORY_FIELDS)
    # The selected metric goes last: DVC plots the last column when no y is given.
    others = [
        k for k in (validation[0] if validation else {}) if k not in ("epoch", "step", metric)
    ]
    fields = ("epoch", "step", *others, metric)
    _write_csv(reports_dir / "validation_history.csv", validation, fields)
    metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
    write_json(reports_dir / "train_metrics.json", metrics)
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the model is DVC's now
    log.info(
        "best %s %.4f at epoch %s; %s samples/s, %s real tokens/s; saved %s",
        metric, metrics["best_validation_metric"] or float("nan"), metrics["best_epoch"],
        metrics["train_samples_per_second"], metrics["train_tokens_per_second"], model_dir,
    )  # fmt: skip
    return metrics


def _summed_over_processes(trainer: Any, counts: list[int]) -> list[int]:
    """``counts`` summed over the training processes (each saw its own share of batches)."""
    if distributed.world_size() == 1:
        return counts
    import torch

    summed = trainer.accelerator.reduce(torch.tensor(counts, device=trainer.args.device), "sum")
    return [int(value) for value in summed.tolist()]


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 2) if seconds > 0 and count else None


def _histories(log_history: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """Training rows (step, epoch, loss, learning_rate, grad_norm) and validation rows
    (epoch, step, loss and the metrics, without the ``eval_`` prefix)."""
    history, validation = [], []
    for entry in log_history:
        if "loss" in entry:
            history.append({k: entry.get(k) for k in HISTORY_FIELDS})
        elif "eval_loss" in entry:
            row = {"epoch": round(float(entry["epoch"]), 4), "step": entry["step"]}
            for key, value in entry.items():
                if key.startswith("eval_") and not key.endswith(("runtime", "per_second")):
                    row[key[5:]] = value
            validation.append(row)
    return history, validation


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


@app.command()
@stage_command("train")
def main(
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
    tokenized_dir: Path = typer.Option(TOKENIZED_DIR, help="output of the tokenize stage"),
    model_dir: Path = typer.Option(MODEL_DIR, help="where the fine-tuned model goes"),
    reports_dir: Path = typer.Option(REPORTS_DIR, help="where the reports go"),
    state_dir: Path = typer.Option(STATE_DIR, help="checkpoints and the registry cache"),
) -> None:
    """Fine-tune on data/tokenized into models/model (see the module docstring)."""
    params = load_params(params_path)
    # Before the model is read: a local start point must be in models/pretrained/.
    require_tracked_inputs(params, PROJECT_ROOT, ["model.name_or_path"])
    # The values this run uses (tuned ones over params.yaml), so its MLflow run logs them too.
    params, _ = apply_tuned_params(params, Path(reports_dir) / BEST_PARAMS_FILE)
    if params.train.processes > 1 and not distributed.launched():
        code = distributed.relaunch(params.train.processes, "tasks.train", sys.argv[1:])
        if code != 0:
            raise StageError(f"train.processes {params.train.processes}: a process failed")
        return
    if distributed.launched():
        distributed.exit_with_launcher()
    if not distributed.is_main_process():
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 reports progress for all
        train(params, tokenized_dir, model_dir, reports_dir, state_dir)
        return
    # The MLflow run is open while training (RUNNING, curves streamed; FAILED with the error).
    with tracking.stage_run(params, "train", state_dir):
        metrics = train(params, tokenized_dir, model_dir, reports_dir, state_dir)
        log_results(metrics, Path(reports_dir))


def log_results(metrics: dict[str, Any], reports_dir: Path) -> None:
    """Into the active train run (the curves were streamed while training): the summary
    numbers, device and precision, the history CSVs and a training-curve plot."""
    import mlflow

    tracking.log_numbers(metrics, prefix="summary.")
    mlflow.set_tags({"device": metrics["device"], "precision": metrics["precision"]})
    for name in ("train_history.csv", "validation_history.csv", "train_metrics.json"):
        if (reports_dir / name).exists():
            mlflow.log_artifact(str(reports_dir / name), artifact_path="reports")
    mlflow.log_figure(_training_curves(reports_dir, metrics["metric"]), "training_curves.png")


def _training_curves(reports_dir: Path, metric: str) -> Any:
    """Loss per step and the validation metric per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    history = pd.read_csv(reports_dir / "train_history.csv")
    validation = pd.read_csv(reports_dir / "validation_history.csv")
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axes.plot(history["step"], history["loss"])
    loss_axes.set(xlabel="step", ylabel="training loss", title="Training loss")
    if metric in validation:
        metric_axes.plot(validation["epoch"], validation[metric], marker="o")
    metric_axes.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric}")
    figure.tight_layout()
    return figure


if __name__ == "__main__":
    app()
