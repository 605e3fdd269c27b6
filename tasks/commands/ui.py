"""The web UIs: MLflow (runs, trials, registry), Prefect (flow runs, deployments) and the Optuna
dashboard (studies, trials, importances).

    python -m tasks.commands.ui mlflow              # http://127.0.0.1:5000
    python -m tasks.commands.ui prefect --port 4255 # http://127.0.0.1:4255
    python -m tasks.commands.ui optuna              # http://127.0.0.1:8080

All bind 127.0.0.1 and keep their state in ``.state/``. ``prefect server start --port`` alone
leaves the UI's API URL at port 4200: :func:`prefect_server` sets both together.
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
    """Command and environment of ``mlflow server`` on ``store_uri`` (default: the project's)."""
    uri = store_uri or default_tracking_uri(state_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "mlflow"), "server", "--backend-store-uri", uri]
    command += ["--host", HOST, "--port", str(port), "--workers", "1"]
    return command, dict(os.environ)


def prefect_server(port: int) -> tuple[list[str], dict[str, str]]:
    """Command and environment of ``prefect server start`` whose UI calls its own API.
    Anyone who reaches the API can create flow runs, so: CSRF protection on, CORS only from
    its own origin, basic auth when ``PREFECT_SERVER_API_AUTH_STRING`` (or else
    ``PREFECT_API_AUTH_STRING``) is ``user:password``."""
    origin = f"http://{HOST}:{port}"
    env = {
        **os.environ,
        "PREFECT_SERVER_API_HOST": HOST,
        "PREFECT_SERVER_API_PORT": str(port),
        # Else it follows PREFECT_API_URL, which may name another server.
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
    """Command and environment of ``optuna-dashboard`` on ``tune.storage``."""
    storage = storage_spec(load_params(params_path), state_dir)
    if storage.startswith("sqlite:///") and not Path(storage.removeprefix("sqlite:///")).exists():
        raise StageError(
            f"{storage}: no study yet: run the tune stage first (`finetune run`, `dvc repro tune`)"
        )
    # wsgiref, not gunicorn: gunicorn 26 opens a control socket outside the project (or,
    # inside a deep project, past AF_UNIX's 108 bytes).
    bin_dir = Path(sys.executable).parent
    command = [str(bin_dir / "optuna-dashboard"), storage, "--host", HOST, "--port", str(port)]
    return [*command, "--server", "wsgiref"], dict(os.environ)


def experiment_url(base: str, experiment_id: str) -> str:
    """The training runs page (MLflow 3.17's UI opens GenAI traces unless told)."""
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
    """Start the Prefect server and UI: flow runs, stage task runs, deployments. CSRF
    protection on, CORS to its own origin; basic auth when PREFECT_API_AUTH_STRING is set."""
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
