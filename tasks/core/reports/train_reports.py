"""What a training run reports: the best epoch's outcome, throughput, the training and
validation histories (CSV, DVC plots), and the summary, histories and a training-curve
figure on the train stage's MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.core import tracking
from tasks.core.config import TrainParams
from tasks.core.io import write_csv

HISTORY_FIELDS = ("step", "epoch", "loss", "learning_rate", "grad_norm")


def outcome(state: Any, validation: list[dict], metric: str, tp: TrainParams) -> dict[str, Any]:
    """The best epoch's validation scores and how far training went."""
    best_row = next((r for r in validation if r["step"] == state.best_global_step), None)
    if best_row is None and validation:
        best_row = max(validation, key=lambda r: r[metric])
    return {
        "metric": metric,
        "best_validation_metric": best_row[metric] if best_row else None,
        "best_validation": {k: v for k, v in (best_row or {}).items() if k not in ("step",)},
        "best_epoch": best_row["epoch"] if best_row else None,
        "epochs_run": round(float(state.epoch or 0), 4),
        "epochs_planned": tp.epochs,
        "stopped_early": bool(state.epoch is not None and state.epoch < tp.epochs - 1e-6),
        "global_steps": state.global_step,
    }


def throughput(counts: dict[str, Any], eval_seconds: float) -> dict[str, Any]:
    """Examples and real tokens per second of training, the padding share, the times."""
    seconds, tokens, padded = counts["seconds"], counts["tokens"], counts["padded_tokens"]
    return {
        "train_samples_per_second": _rate(counts["samples"], seconds),
        "train_tokens_per_second": _rate(tokens, seconds),
        "padding_share": round(1 - tokens / padded, 4) if padded else None,
        "train_time_s": round(seconds, 2),
        "eval_time_s": round(eval_seconds, 2),
        "wall_time_s": None,  # filled in at the end
    }


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 2) if seconds > 0 and count else None


def histories(log_history: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
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


def write_histories(
    reports_dir: Path, history: list[dict], validation: list[dict], metric: str
) -> None:
    write_csv(reports_dir / "train_history.csv", history, HISTORY_FIELDS)
    # The selected metric goes last: DVC plots the last column when no y is given.
    others = [
        k for k in (validation[0] if validation else {}) if k not in ("epoch", "step", metric)
    ]
    fields = ("epoch", "step", *others, metric)
    write_csv(reports_dir / "validation_history.csv", validation, fields)


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
