"""Deployments of the training pipeline: a nightly retrain, served locally or run by a worker.

    python -m flows.deploy serve              # register + execute scheduled runs (this machine)
    python -m flows.deploy pool --pool NAME   # register for `prefect worker start --pool NAME`

A pool deployment runs from git, not from this directory: its worker (on any machine)
clones ``--repo`` at ``--branch``, ``dvc pull``s what the DVC remote holds, runs the stages
(those restored are up to date and skipped) and ``dvc push``es what they produced.

Both need a Prefect API (``make prefect-server`` starts one on 127.0.0.1; set
``PREFECT_API_URL``). The schedule has a stable slug, so re-deploying updates it in place
instead of creating a second schedule.
"""

from __future__ import annotations

import subprocess
from typing import Any

import typer

from tasks.core.environment import PROJECT_ROOT

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


def _git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


@app.command()
def pool(
    pool_name: str = typer.Option("training", "--pool", help="Work pool (type process)."),
    cron: str = typer.Option(DEFAULT_CRON, help="Cron schedule (UTC)."),
    name: str = typer.Option(DEPLOYMENT_NAME, help="Deployment name."),
    repo: str = typer.Option(
        "", help="Git URL the workers clone (default: this checkout's `origin` remote)."
    ),
    branch: str = typer.Option("", help="Branch the workers run (default: the current one)."),
) -> None:
    """Register the deployment on a work pool; `prefect worker start --pool NAME` runs it,
    from a fresh clone of REPO with the data and outputs of the DVC remote."""
    from prefect import flow
    from prefect.runner.storage import GitRepository

    repo = repo or _git("remote", "get-url", "origin")
    if not repo:
        raise typer.BadParameter(
            "this checkout has no git remote 'origin': pass the URL workers clone "
            "(a local path works for workers on this machine)",
            param_hint="--repo",
        )
    branch = branch or _git("branch", "--show-current") or None
    source = flow.from_source(GitRepository(url=repo, branch=branch), entrypoint=ENTRYPOINT)
    options = deployment_options(cron, {"sync_remote_data": True}, name=name)
    source.deploy(work_pool_name=pool_name, **options)
    typer.echo(f"{name}: workers of pool {pool_name!r} run {repo} at {branch or 'HEAD'}")


if __name__ == "__main__":
    app()
