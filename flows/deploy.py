"""Deployments of the training pipeline: a nightly retrain, served locally or run by a worker.

    python -m flows.deploy serve              # register + execute scheduled runs (this machine)
    python -m flows.deploy pool --pool NAME   # register for `prefect worker start --pool NAME`

A pool deployment's worker clones ``--repo`` at ``--branch``, ``dvc pull``s, runs the stages
and ``dvc push``es. Both need a Prefect API (``PREFECT_API_URL``); the schedule's stable slug
makes re-deploying update it in place.
"""

from __future__ import annotations

import enum
import os
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.settings import DEFAULT_TIMEOUT, DEFAULT_TIMEOUTS, DeploymentSettings, settings_env
from tasks.core.cli import user_help
from tasks.core.environment import PROJECT_ROOT

DEPLOYMENT_NAME = "nightly-retrain"
SCHEDULE_SLUG = "nightly-retrain"
DEFAULT_CRON = "0 2 * * *"
ENTRYPOINT = "flows/pipeline.py:training_pipeline"

app = typer.Typer(add_completion=False, help=user_help(__doc__))


class Collision(enum.StrEnum):
    """What happens to a run started while the deployment's concurrency limit is reached."""

    enqueue = "enqueue"
    cancel = "cancel"


def schedule(cron: str = DEFAULT_CRON, timezone: str = "UTC"):
    """The nightly cron schedule, identified by its slug."""
    from prefect.schedules import Cron

    return Cron(cron, timezone=timezone, slug=SCHEDULE_SLUG)


def deployment_options(
    cron: str,
    parameters: dict[str, Any] | None = None,
    paused: bool = False,
    name: str = DEPLOYMENT_NAME,
    concurrency: int = 1,
    collision: str = "enqueue",
) -> dict[str, Any]:
    """Options: the nightly schedule, at most ``concurrency`` runs at once (no interleaving)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    strategy = {"enqueue": "ENQUEUE", "cancel": "CANCEL_NEW"}[collision]
    return {
        "name": name,
        "schedules": [schedule(cron)],
        "parameters": parameters or {},
        "paused": paused,
        "tags": ["training"],
        "description": "Nightly retrain: every DVC stage in order, unchanged ones skipped.",
        "concurrency_limit": ConcurrencyLimitConfig(
            limit=concurrency, collision_strategy=ConcurrencyLimitStrategy(strategy)
        ),
    }


def nightly_deployment(
    cron: str = DEFAULT_CRON,
    parameters: dict[str, Any] | None = None,
    paused: bool = False,
    **options: Any,
):
    """A runner deployment of ``training_pipeline`` for :func:`prefect.serve`."""
    # Not at the top: `finetune deploy --help` must not wait for Prefect.
    from flows.pipeline import training_pipeline

    return training_pipeline.to_deployment(
        **deployment_options(cron, parameters, paused, **options)
    )


def parse_timeouts(values: list[str]) -> dict[str, float]:
    """``["train=7200", ...]`` -> ``{"train": 7200.0}``; typer.BadParameter otherwise."""
    timeouts = {}
    for value in values:
        stage, _, seconds = value.partition("=")
        try:
            timeouts[stage] = float(seconds)
        except ValueError:
            timeouts[stage] = -1.0
        if not stage or timeouts[stage] <= 0:
            raise typer.BadParameter(f"{value!r}: expected STAGE=SECONDS", param_hint="--timeout")
    return timeouts


ALLOW_HELP = (
    "A params key (or pattern: train.*) a run's overrides may set; `preset` allows presets. "
    "Repeatable; default none. tracking.*, tune.storage and model.name_or_path only by full name."
)
TIMEOUT_HELP = "STAGE=SECONDS (repeatable; `experiment` for ad-hoc runs). Default: tune and "
TIMEOUT_HELP += f"train {DEFAULT_TIMEOUTS['train']} s, other stages {DEFAULT_TIMEOUT} s."
UPDATE_HELP = "First `dvc update` the imports data.source reads (parameter update_imports)."
COLLISION_HELP = "A run started while --concurrency runs run: waits (enqueue) or is cancelled."


@app.command()
def serve(
    cron: Annotated[str, typer.Option(help="Cron schedule (UTC).")] = DEFAULT_CRON,
    limit: Annotated[
        int, typer.Option(help="Flow runs this process executes at the same time.")
    ] = 1,
    project: Annotated[
        Path,
        typer.Option(
            help="The project every run of the deployment uses (fixed here).",
            show_default="this checkout",
        ),
    ] = PROJECT_ROOT,
    allow: Annotated[list[str], typer.Option(help=ALLOW_HELP)] = (),
    timeout: Annotated[list[str], typer.Option(help=TIMEOUT_HELP)] = (),
    concurrency: Annotated[
        int, typer.Option(min=1, help="Runs of the deployment at the same time.")
    ] = 1,
    collision: Annotated[Collision, typer.Option(help=COLLISION_HELP)] = Collision.enqueue,
    name: Annotated[str, typer.Option(help="Deployment name.")] = DEPLOYMENT_NAME,
    update_imports: Annotated[bool, typer.Option(help=UPDATE_HELP)] = True,
) -> None:
    """Register the deployment and run its scheduled (and triggered) flow runs here."""
    from prefect import serve as prefect_serve

    if not (project / "dvc.yaml").is_file():
        raise typer.BadParameter(f"{project} holds no dvc.yaml", param_hint="--project")
    settings = DeploymentSettings(
        project=str(project.resolve()), allow=tuple(allow), timeouts=parse_timeouts(timeout)
    )
    os.environ.update(settings_env({name: settings}))
    deployment = nightly_deployment(
        cron,
        {"update_imports": update_imports},
        name=name,
        concurrency=concurrency,
        collision=collision.value,
    )
    prefect_serve(deployment, limit=limit)


def _git(*arguments: str) -> str:
    done = subprocess.run(
        ["git", *arguments], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else ""


@app.command()
def pool(
    pool_name: Annotated[
        str, typer.Option("--pool", help="Work pool (type process).")
    ] = "training",
    cron: Annotated[str, typer.Option(help="Cron schedule (UTC).")] = DEFAULT_CRON,
    name: Annotated[str, typer.Option(help="Deployment name.")] = DEPLOYMENT_NAME,
    repo: Annotated[
        str,
        typer.Option(help="Git URL the workers clone (default: this checkout's `origin` remote)."),
    ] = "",
    branch: Annotated[
        str, typer.Option(help="Branch the workers run (default: the current one).")
    ] = "",
    allow: Annotated[list[str], typer.Option(help=ALLOW_HELP)] = (),
    timeout: Annotated[list[str], typer.Option(help=TIMEOUT_HELP)] = (),
    concurrency: Annotated[
        int, typer.Option(min=1, help="Runs of the deployment at the same time.")
    ] = 1,
    collision: Annotated[Collision, typer.Option(help=COLLISION_HELP)] = Collision.enqueue,
    update_imports: Annotated[bool, typer.Option(help=UPDATE_HELP)] = True,
) -> None:
    """Register the deployment on a work pool; `prefect worker start --pool NAME` runs it,
    from a fresh clone of REPO with the data and outputs of the DVC remote.

    The settings (--allow, --timeout) travel in the deployment's `env` job variable: lock
    `env` and `command` in the pool's base job template, or a run can replace them."""
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
    options = deployment_options(
        cron,
        {"sync_remote_data": True, "update_imports": update_imports},
        name=name,
        concurrency=concurrency,
        collision=collision.value,
    )
    settings = DeploymentSettings(allow=tuple(allow), timeouts=parse_timeouts(timeout))
    env = settings_env({name: settings})
    source.deploy(work_pool_name=pool_name, job_variables={"env": env}, **options)
    typer.echo(f"{name}: workers of pool {pool_name!r} run {repo} at {branch or 'HEAD'}")


if __name__ == "__main__":
    app()
