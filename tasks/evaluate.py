"""Stage ``evaluate``: score the trained model on the test split, once.

Reads ``task``, ``train.precision`` and ``evaluate`` from ``params.yaml``, the test split of
``data/tokenized/`` and ``models/model/``. Writes into ``reports/``: ``metrics.json`` (DVC
metrics, scores only: register depends on it, so nothing in it changes between two runs of
the same model and data), ``inference_speed.json`` (nothing depends on it),
``confusion.csv``, ``confusion_matrix.png``, ``errors.jsonl``, ``slices.json``,
``eval_report.md``, ``behaviour.json`` (``evaluate.behaviour``) and ``evaluated.json`` (the
md5 of the weights scored and the behaviour gate's outcome: register registers nothing else).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS, Params
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.errors import StageError
from tasks.core.evaluation import behaviour
from tasks.core.evaluation.eval_reports import SLICES_FILE, SPEED_FILE
from tasks.core.evaluation.scoring import evaluate
from tasks.core.paths import MODEL_DIR, REPORTS_DIR, TOKENIZED_DIR
from tasks.core.registration.fingerprints import EVALUATED_FILE, record_evaluation

log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, help=user_help(__doc__))


@app.command()
@stage_command("evaluate")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    tokenized_dir: Annotated[
        Path, typer.Option(help="output of the tokenize stage")
    ] = TOKENIZED_DIR,
    model_dir: Annotated[Path, typer.Option(help="the trained model")] = MODEL_DIR,
    reports_dir: Annotated[Path, typer.Option(help="where the reports go")] = REPORTS_DIR,
) -> None:
    """Score models/model on the test split (see the module docstring)."""
    run_stage(stage_params(params_path, "evaluate"), tokenized_dir, model_dir, reports_dir)


def run_stage(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
    project: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """The stage in its MLflow run: scores, reports, behavioural gate, last ``evaluated.json``."""
    # Never a record of an earlier model: register reads it to know what it may register.
    (Path(reports_dir) / EVALUATED_FILE).unlink(missing_ok=True)
    with tracking.stage_run(params, "evaluate", state_dir, project):
        metrics = evaluate(params, tokenized_dir, model_dir, reports_dir)
        log_to_mlflow(metrics, Path(reports_dir))
        try:
            checked = behaviour.check_model(params, model_dir, reports_dir)
        except StageError as exc:
            record_evaluation(reports_dir, model_dir, "failed", str(exc))
            raise
        finally:  # a failed gate still leaves its report in the run
            log_behaviour(Path(reports_dir))
        record_evaluation(reports_dir, model_dir, "disabled" if checked is None else "passed")
        if checked is not None:
            log.info("behavioural checks: %s", behaviour.summary(checked))
    return metrics


def log_to_mlflow(metrics: dict[str, Any], reports_dir: Path) -> None:
    """Into the evaluate stage's active MLflow run: test metrics (``test_``) and reports."""
    import mlflow

    tracking.log_numbers(metrics, prefix="test_")
    tracking.log_to_parent(metrics, prefix="test_")
    speed_path = reports_dir / SPEED_FILE
    if speed_path.exists():
        tracking.log_numbers(json.loads(speed_path.read_text()), prefix="test_")
    slices_path = reports_dir / SLICES_FILE
    if slices_path.exists():
        tracking.log_numbers(json.loads(slices_path.read_text())["slices"], prefix="slice.")
    names = ("metrics.json", SPEED_FILE, "eval_report.md", "confusion_matrix.png")
    names += ("confusion.csv", SLICES_FILE)
    for name in (*names, "errors.jsonl"):
        if (reports_dir / name).exists():
            mlflow.log_artifact(str(reports_dir / name), artifact_path="reports")


def log_behaviour(reports_dir: Path) -> None:
    """Into the active MLflow run: the behavioural checks' pass rates and report."""
    import mlflow

    path = reports_dir / behaviour.REPORT_FILE
    if path.exists():
        tracking.log_numbers(behaviour.metrics_for_mlflow(json.loads(path.read_text())))
        for name in (behaviour.REPORT_FILE, "eval_report.md"):
            mlflow.log_artifact(str(reports_dir / name), artifact_path="reports")


if __name__ == "__main__":
    app()
