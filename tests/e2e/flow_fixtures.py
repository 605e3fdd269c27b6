"""Fixtures of the flow tests (tests/e2e/test_flows*.py), which load them with
``pytest_plugins = ["flow_fixtures"]``: a real Prefect server and tiny-model project copies
(module-scoped: one of each per test file)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import (
    make_project,
    project_env,
    stop_server,
)
from flow_helpers import SMALL, TINY, _free_port, _healthy, _wait_for
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL, temporary_settings


@pytest.fixture(scope="module")
def small() -> dict:
    """Overrides that make a whole pipeline run take seconds: a few hundred reviews and a
    tiny random BERT (a project needs it in models/pretrained/tiny: :func:`project_with`)."""
    return dict(SMALL)


@pytest.fixture(scope="module")
def project_with(tiny_model_dir):
    """``project_with(directory)``: a fresh project copy holding the tiny model."""

    def make(directory: Path) -> Path:
        project = make_project(directory)
        shutil.copytree(tiny_model_dir, project / TINY)
        return project

    return make


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real ``prefect server`` on 127.0.0.1 with its own home; yields the API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {**project_env(), "PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    port = url.split(":")[2].split("/")[0]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        ["prefect", "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(lambda: _healthy(url), 90, "prefect server")
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
            APILogHandler().flush()  # ship this process's flow logs before the server stops
    finally:
        stop_server(server)
