"""Deployments of the training pipeline: a nightly retrain, served locally or run by a worker.

    python -m flows.deploy serve              # register + execute scheduled runs (this machine)
    python -m flows.deploy pool --pool NAME   # register for `prefect worker start --pool NAME`

Both need a Prefect API (``make prefect-server`` starts one on 127.0.0.1; set
``PREFECT_API_URL``). The schedule has a stable slug, so re-deploying updates it in place
instead of creating a second schedule.
"""

from __future__ import annotations

from typing import Any

import typer

from tasks.environment import PROJECT_ROOT

DEPLOYMENT_NAME = "nightly-retrain"
SCHEDULE_SLUG = "nightly-retrain"
DEFAULT_CRON = "0 2 * * *"  # 02:00 UTC every night
ENTRYPOINT = "flows/pipeline.py:training_pipeline"

app = typer.Typer(add_completion=False, help=__doc__)


def schedule(cron: str = DEFAULT_CRON, timezone: str = "UTC"):
    """The nightly cron schedule, identified by its slug."""
    from prefect.schedules import Cron

    return Cron(cron, timezone=timezone, slug=SCHEDULE_SLUG)


def deployment_options(
    cron: str,
    parameters: dict[str, Any] | None = None,
    paused: bool = False,
    name: str = DEPLOYMENT_NAME,
) -> dict[str, Any]:
    return {
        "name": name,
        "schedules": [schedule(cron)],
        "parameters": parameters or {},
        "paused": paused,
        "tags": ["training"],
        "description": "Nightly retrain: every DVC stage in order, unchanged ones skipped.",
    }


def nightly_deployment(
    cron: str = DEFAULT_CRON, parameters: dict[str, Any] | None = None, paused: bool = False
):
    """A runner deployment of ``training_pipeline`` for :func:`prefect.serve`."""
    from flows.pipeline import training_pipeline

    return training_pipeline.to_deployment(**deployment_options(cron, parameters, paused))


@app.command()
def serve(
    cron: str = typer.Option(DEFAULT_CRON, help="Cron schedule (UTC)."),
    limit: int = typer.Option(1, help="Flow runs executed at the same time."),
) -> None:
    """Register the deployment and run its scheduled (and triggered) flow runs here."""
    from prefect import serve as prefect_serve

    prefect_serve(nightly_deployment(cron), limit=limit)


@app.command()
def pool(
    pool_name: str = typer.Option("training", "--pool", help="Work pool (type process)."),
    cron: str = typer.Option(DEFAULT_CRON, help="Cron schedule (UTC)."),
    name: str = typer.Option(DEPLOYMENT_NAME, help="Deployment name."),
) -> None:
    """Register the deployment on a work pool; `prefect worker start --pool NAME` runs it."""
    from prefect import flow

    source = flow.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINT)
    source.deploy(work_pool_name=pool_name, **deployment_options(cron, name=name))


if __name__ == "__main__":
    app()
