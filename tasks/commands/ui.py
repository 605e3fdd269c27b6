"""The web UIs: MLflow (runs, trials, registry), Prefect (flow runs, deployments) and the Optuna
dashboard (studies, trials, importances).

    python -m tasks.commands.ui mlflow              # http://127.0.0.1:5000
    python -m tasks.commands.ui prefect --port 4255 # http://127.0.0.1:4255
    python -m tasks.commands.ui optuna              # http://127.0.0.1:8080

All bind 127.0.0.1 and keep their state in the project (``.state/``). The Prefect UI is a
browser app that calls the API at the address ``/ui-settings`` gives it; ``prefect server
start --port`` alone leaves that at the default port 4200 (so the page says "Something went
wrong" on any other port): :func:`prefect_server` sets the port, the host and the UI's API
URL together.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from tasks.core.cli import ParamsPath, stage_command, user_help
from tasks.core.config import DEFAULT_PARAMS, load_params
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.tracking import default_tracking_uri
from tasks.tuning.storage import describe_storage, storage_spec

HOST = "127.0.0.1"
app = typer.Typer(add_completion=False, help=user_help(__doc__), no_args_is_help=True)


def mlflow_server(
    port: int, store_uri: str | None = None, state_dir: Path = STATE_DIR
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``mlflow server`` on ``store_uri`` (default: the project's
    SQLite store, artifacts served from beside it)."""
    uri = store_uri or default_tracking_uri(state_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", uri]
    command += ["--host", HOST, "--port", str(port), "--workers", "1"]
    return command, dict(os.environ)


def prefect_server(port: int) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``prefect server start`` whose UI calls its own API.

    Anyone who reaches the API can create flow runs, so the server refuses state-changing
    requests without a CSRF token (Prefect's client and UI fetch one), answers cross-origin
    requests only from its own origin (a web page elsewhere cannot call it), and requires
    basic auth when ``PREFECT_SERVER_API_AUTH_STRING`` (or else ``PREFECT_API_AUTH_STRING``,
    what the clients send) is set to ``user:password``.
    """
    origin = f"http://{HOST}:{port}"
    env = {
        **os.environ,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        # What /ui-settings hands the browser; it follows PREFECT_API_URL when that is set,
        # which may name another server: set it explicitly.
        "PREFECT_UI_API_URL": f"{origin}/api",
        "PREFECT_UI_URL": origin,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": origin,
    }
    auth = os.environ.get("PREFECT_SERVER_API_AUTH_STRING") or os.environ.get(
        "PREFECT_API_AUTH_STRING"
    )
    if auth:
        if ":" not in auth:
            raise typer.BadParameter(
                "PREFECT_SERVER_API_AUTH_STRING / PREFECT_API_AUTH_STRING: expected "
                "user:password (the value is not shown)"
            )
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(port)]
    return command, env


def optuna_dashboard(
    port: int, params_path: Path = DEFAULT_PARAMS, state_dir: Path = STATE_DIR
) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``optuna-dashboard`` on the study storage the tune stage
    uses (``tune.storage``, or the project's SQLite default). A PostgreSQL URL carries no
    password: libpq reads it from ``PGPASSFILE`` (.state/pgpass) or ``PGPASSWORD``."""
    storage = storage_spec(load_params(params_path), state_dir)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise StageError(
            f"{storage}: no study yet: run the tune stage first (`finetune run`, `dvc repro tune`)"
        )
    # Its own WSGI server, not gunicorn (its default when installed, as here for MLflow):
    # gunicorn 26 opens a control socket in $XDG_RUNTIME_DIR or ~/.gunicorn, outside the
    # project, and a socket path inside a deep project exceeds AF_UNIX's 108 bytes.
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "optuna-dashboard"), storage, "--host", HOST, "--port", str(port)]
    return [*command, "--server", "wsgiref"], dict(os.environ)


def experiment_url(base: str, experiment_id: str) -> str:
    """The page of an experiment's training runs.

    MLflow 3.17's UI opens every experiment on its GenAI traces overview unless the URL (or
    the browser's last choice) selects the model-training workflow; the experiment's
    ``mlflow.experimentKind`` tag (set by tasks.core.tracking) is what older 3.x UIs read.
    """
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


@app.command("mlflow")
def mlflow_ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5000,
    store: Annotated[
        str | None, typer.Option(help="Tracking store (default: .state/mlflow).")
    ] = None,
) -> None:
    """Start the MLflow UI: experiments, nested runs and trials, the model registry."""
    command, env = mlflow_server(port, store)
    typer.echo(f"Training runs: {training_runs_url(f'http://{HOST}:{port}', command[3])}")
    os.execve(command[0], command, env)


def training_runs_url(base: str, store_uri: str) -> str:
    """:func:`experiment_url` of ``tracking.experiment`` when the store has it."""
    name = load_params().tracking.experiment
    if store_uri.startswith("sqlite:///") and Path(store_uri.removeprefix("sqlite:///")).exists():
        import mlflow

        experiment = mlflow.MlflowClient(store_uri).get_experiment_by_name(name)
        if experiment is not None:
            return experiment_url(base, experiment.experiment_id)
    return f"{base}/#/experiments?workflowType=machine_learning"


@app.command("prefect")
def prefect_ui(port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 4200) -> None:
    """Start the Prefect server and UI: flow runs, stage task runs, deployments.

    CSRF protection on, CORS limited to its own origin; basic auth when
    PREFECT_SERVER_API_AUTH_STRING or PREFECT_API_AUTH_STRING is set (user:password)."""
    command, env = prefect_server(port)
    auth = "on" if "PREFECT_SERVER_API_AUTH_STRING" in env else "off (set PREFECT_API_AUTH_STRING)"
    typer.echo(f"Prefect UI: {env['PREFECT_UI_URL']} (CSRF protection on, basic auth {auth})")
    os.execve(command[0], command, env)


@app.command("optuna")
@stage_command("ui")
def optuna_ui(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 8080,
    params_path: ParamsPath = DEFAULT_PARAMS,
) -> None:
    """Start the Optuna dashboard on the tuning studies: trials, history, importances."""
    command, env = optuna_dashboard(port, params_path)
    typer.echo(f"Optuna dashboard: http://{HOST}:{port}/dashboard ({describe_storage(command[1])})")
    os.execve(command[0], command, env)


if __name__ == "__main__":
    app()
