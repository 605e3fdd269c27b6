"""Stage ``train``: fine-tune the encoder on the tokenized train split, pick the best epoch
on validation.

Reads ``task``, ``model.name_or_path``, ``tracking.uri`` and ``train`` from ``params.yaml``,
``data/tokenized/`` and (``tune.enabled``) ``reports/best_params.json``, whose values replace
the ``train`` keys they name. Writes ``models/model/`` (with ``training_params.json``: the
values used and their source), ``reports/train_history.csv``,
``reports/validation_history.csv`` and ``reports/train_metrics.json``. The stock transformers
``Trainer`` runs the loop; checkpoints in ``.state/checkpoints/<run key>``, one run per key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from transformers import EarlyStoppingCallback, TrainerCallback

from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS, Params
from tasks.core.data.tokenized import load_tokenized
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.io import write_json
from tasks.core.modeling import distributed, trainer_progress
from tasks.core.modeling.checkpoints import final_model, run_lock, sweep_stale_checkpoints
from tasks.core.modeling.train_setup import Run, resume_point, set_up_run
from tasks.core.modeling.training import SaveEvery, make_trainer, training_arguments
from tasks.core.paths import MODEL_DIR, REPORTS_DIR, TOKENIZED_DIR
from tasks.core.pretrained.model import quiet_transformers, save_model
from tasks.core.reports.train_reports import (
    histories,
    log_results,
    outcome,
    throughput,
    write_histories,
)
from tasks.core.tuned import BEST_PARAMS_FILE, apply_tuned_params

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=user_help(__doc__))


def train(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Fine-tune on ``tokenized_dir``, restore the best validation epoch, replace ``model_dir``
    whole and write the reports to ``reports_dir``; ``state_dir`` holds the checkpoints (for
    resume). Returns the content of ``train_metrics.json``."""
    started = time.perf_counter()
    quiet_transformers()
    params, provenance = apply_tuned_params(params, Path(reports_dir) / BEST_PARAMS_FILE)
    if provenance["params_source"] == "tune":
        log.info("train values from tuning (trial %s): %s", provenance["best_trial"],
                 provenance["tuned_params"])  # fmt: skip
    data, manifest = load_tokenized(Path(tokenized_dir), params.task, ("train", "validation"))
    run = set_up_run(params, data, manifest, Path(tokenized_dir), Path(state_dir))
    main = distributed.is_main_process()  # rank 0 holds the lock for all ranks
    if main:
        sweep_stale_checkpoints(run.run_dir)
    with run_lock(run.run_dir) if main else contextlib.nullcontext():
        checkpoint = resume_point(run)
        trainer = _make_trainer(run)
        trainer_progress.install(trainer, "train")
        counts = _fit(trainer, checkpoint)
        metrics = _metrics(run, trainer, counts, provenance)
        if not main:
            return metrics
        final = final_model(trainer)  # the best epoch's weights, LoRA merged
        trained_with = {**provenance, "train": run.params.train.model_dump(mode="json")}
        save_model(final, run.tokenizer, Path(model_dir), {"training_params.json": trained_with})
        history, validation = histories(trainer.state.log_history)
        write_histories(Path(reports_dir), history, validation, run.metric)
        metrics["wall_time_s"] = round(time.perf_counter() - started, 2)
        write_json(Path(reports_dir) / "train_metrics.json", metrics)
        shutil.rmtree(run.run_dir, ignore_errors=True)  # finished: the model is DVC's now
    log.info(
        "best %s %.4f at epoch %s; %s samples/s, %s real tokens/s; saved %s",
        run.metric, metrics["best_validation_metric"] or float("nan"), metrics["best_epoch"],
        metrics["train_samples_per_second"], metrics["train_tokens_per_second"], model_dir,
    )  # fmt: skip
    return metrics


class LiveMetrics(TrainerCallback):
    """Logs each training log (``train_*``) and validation (``val_<metric>``) to the active
    MLflow run as it happens; without an active run it does nothing. Hand-written because
    transformers' ``MLflowCallback`` also logs ~150 params per run and starts its own run."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any):
        # Never imports MLflow itself: without it imported there is no active run, and its
        # import (about 1 s) inside the loop was the whole A/B gap of bench/RESULTS.md.
        mlflow = sys.modules.get("mlflow")
        if mlflow is None or mlflow.active_run() is None or not logs:
            return
        if "loss" in logs:
            names = ("loss", "learning_rate", "grad_norm")
            values = {f"train_{k}": logs[k] for k in names if k in logs}
        elif "eval_loss" in logs:
            values = {
                f"val_{k[5:]}": v
                for k, v in logs.items()
                if k.startswith("eval_") and not k.endswith(("runtime", "per_second"))
            }
        else:
            return
        tracking.log_numbers(values, "", step=state.global_step)


def _make_trainer(run: Run) -> Any:
    """The run's stock Trainer: evaluation and checkpoint every epoch, best epoch at the end."""
    tp = run.params.train
    args = training_arguments(
        tp, run.precision, run.run_dir, best_metric=run.metric, log_steps=True,
        mean_batch=run.mean_batch,
    )  # fmt: skip
    callbacks = [SaveEvery(tp.save_steps), LiveMetrics()]
    if tp.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=tp.early_stopping_patience))
    return make_trainer(
        run.params.task, run.model, args, run.data, run.tokenizer, run.labels, callbacks,
        max_tokens=tp.max_tokens_per_batch,
    )  # fmt: skip


def _fit(trainer: Any, checkpoint: Path | None) -> dict[str, Any]:
    """Train (resuming from ``checkpoint``); the step resumed from, seconds, examples and tokens."""
    resumed_step = None
    if checkpoint is not None:
        resumed_step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    train_started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    evaluated = sum(
        entry.get("eval_runtime", 0.0)
        for entry in trainer.state.log_history
        if entry.get("step", 0) > (resumed_step or 0)
    )
    seconds = time.perf_counter() - train_started - evaluated
    collator = trainer.data_collator
    seen = distributed.summed_over_processes(
        trainer, [collator.samples, collator.tokens, collator.padded]
    )
    return {"resumed_from_step": resumed_step, "seconds": seconds, "eval_seconds": evaluated,
            **dict(zip(("samples", "tokens", "padded_tokens"), seen, strict=True))}  # fmt: skip


def _metrics(run: Run, trainer: Any, counts: dict[str, Any], provenance: dict) -> dict[str, Any]:
    """The content of ``train_metrics.json`` (``wall_time_s`` filled in at the end)."""
    tp = run.params.train
    _, validation = histories(trainer.state.log_history)
    return {
        **outcome(trainer.state, validation, run.metric, tp),
        "resumed_from_step": counts["resumed_from_step"],
        "train_examples": len(run.data["train"]),
        "max_tokens_per_batch": tp.max_tokens_per_batch,
        "mean_batch_examples": round(
            run.mean_batch or min(tp.batch_size, len(run.data["train"])), 2
        ),
        "learning_rate": trainer.args.learning_rate,
        **throughput(counts, counts["eval_seconds"]),
        "device": run.precision.device,
        "precision": run.precision.dtype,
        "method": tp.method,
        "head": run.head,
        "trainable_parameters": run.parameters[0],
        "total_parameters": run.parameters[1],
        "seed": tp.seed,
        "processes": distributed.world_size(),
        "params_source": provenance["params_source"],
        "tuned_params": provenance["tuned_params"],
    }


@app.command()
@stage_command("train")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    tokenized_dir: Annotated[
        Path, typer.Option(help="output of the tokenize stage")
    ] = TOKENIZED_DIR,
    model_dir: Annotated[Path, typer.Option(help="where the fine-tuned model goes")] = MODEL_DIR,
    reports_dir: Annotated[Path, typer.Option(help="where the reports go")] = REPORTS_DIR,
    state_dir: Annotated[Path, typer.Option(help="checkpoints and the registry cache")] = STATE_DIR,
) -> None:
    """Fine-tune on data/tokenized into models/model (see the module docstring)."""
    params = stage_params(params_path, "train")  # checked: inputs tracked by DVC
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
    with tracking.stage_run(params, "train", state_dir):
        metrics = train(params, tokenized_dir, model_dir, reports_dir, state_dir)
        log_results(metrics, Path(reports_dir))


if __name__ == "__main__":
    app()
