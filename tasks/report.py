"""Stage ``report``: one self-contained HTML page per pipeline run, ``reports/report.html``.

Reads only what the other stages wrote under ``reports/`` and ``data/prepared/``, plus
lineage from git and ``dvc.lock`` (the deps in dvc.yaml); a missing file becomes a note in
its section. Inline CSS and PNGs, no network or scripts; every text from the data is
HTML-escaped (security). Logged to the pipeline's MLflow parent run as ``report/report.html``.
"""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Annotated

import typer

from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS
from tasks.core.environment import PROJECT_ROOT
from tasks.core.io import write_atomic
from tasks.core.paths import PREPARED, REPORTS, REPORTS_DIR
from tasks.core.reports.html_blocks import CSS, esc
from tasks.core.reports.report_sections import (
    data_section,
    errors_section,
    lineage_section,
    read_json,
    test_section,
    training_section,
    tuning_section,
)

log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, help=user_help(__doc__))

REPORT_NAME = "report.html"


def headline(reports: Path) -> str:
    """One line for the title: model, version and test score."""
    registry = read_json(reports / "registry.json")
    if registry:
        return (
            f"{registry['model_name']} v{registry['version']}, test {registry['metric']} "
            f"{registry['score']:.4f} ({registry['decision']})"
        )
    return "pipeline run"


def build_report(project: Path, parent_run: str | None = None) -> str:
    """The HTML page of the outputs in ``project`` (reports/, data/prepared/)."""
    reports, prepared = project / REPORTS, project / PREPARED
    title = f"Run report: {headline(reports)}"
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sections = [
        data_section(reports, prepared),
        tuning_section(reports),
        training_section(reports),
        test_section(reports),
        errors_section(reports),
        lineage_section(reports, project, parent_run),
    ]
    nav = " | ".join(
        f'<a href="#{a}">{t}</a>'
        for a, t in [("data", "Data"), ("tuning", "Tuning"), ("training", "Training"),
                     ("test", "Test"), ("errors", "Errors"), ("lineage", "Lineage")]
    )  # fmt: skip
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f'<p class="note">Generated {when}. {nav}</p>{"".join(sections)}</body></html>\n'
    )


def write_report(project: Path, output: Path, parent_run: str | None = None) -> Path:
    """Build the page and swap it in whole (a failure keeps the previous report)."""
    write_atomic(output, build_report(project, parent_run))
    return output


@app.command()
@stage_command("report")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    output: Annotated[Path, typer.Option(help="the page")] = REPORTS_DIR / REPORT_NAME,
) -> None:
    """Write reports/report.html and log it to the pipeline's MLflow run."""
    import mlflow

    params = stage_params(params_path, "report")
    with tracking.stage_run(params, "report") as run:
        client = mlflow.MlflowClient()
        parent = client.get_run(run.info.run_id).data.tags.get("mlflow.parentRunId")
        path = write_report(PROJECT_ROOT, output, parent)
        client.log_artifact(parent or run.info.run_id, str(path), artifact_path="report")
        log.info("wrote %s (%d KB), logged to MLflow run %s", path, path.stat().st_size // 1024,
                 parent or run.info.run_id)  # fmt: skip


if __name__ == "__main__":
    app()
