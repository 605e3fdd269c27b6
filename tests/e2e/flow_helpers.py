"""Constants and helpers shared by the flow tests (tests/e2e/test_flows*.py; their fixtures:
flow_fixtures.py). Two test files so that ``make test``'s two xdist workers (``--dist
loadfile``) can each take a share of the flow tests."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import mlflow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
)

from flows.deploy import DEPLOYMENT_NAME
from flows.pipeline import training_pipeline
from flows.settings import DIRECT, SETTINGS_ENV, DeploymentSettings, settings_env

DEPLOYMENT = f"training-pipeline/{DEPLOYMENT_NAME}"


TINY = "models/pretrained/tiny"  # start-point models must live in models/pretrained/
SMALL = {
    "prepare.max_examples": 200,
    "model.name_or_path": TINY,
    "tokenize.max_length": 64,
    "train.epochs": 1,
    "tune.n_trials": 1,
    "tune.timeout": None,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


async def _artifacts(flow_run_id) -> dict:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return {a.key: a for a in found}


async def _task_runs(flow_run_id) -> dict:
    async with get_client() as client:
        found = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]})
        )
        return {t.name: t for t in found}


def training_pipeline_in(project: Path, monkeypatch, **settings):
    """``training_pipeline`` for direct calls in this process, on ``project`` (what ``deploy
    serve --project`` fixes for a deployment); ``settings``: other DeploymentSettings."""
    fixed = DeploymentSettings(project=str(project), **{"allow": None, **settings})
    monkeypatch.setenv(SETTINGS_ENV, settings_env({DIRECT: fixed})[SETTINGS_ENV])
    return training_pipeline


def _registry(project: Path) -> dict:
    """Every registered version and alias in the project's own MLflow store."""
    uri = f"sqlite:///{project / '.state' / 'mlflow' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {}
    for model in client.search_registered_models():
        for version in client.search_model_versions(f"name='{model.name}'"):
            versions[(model.name, version.version)] = sorted(version.aliases)
    return versions
