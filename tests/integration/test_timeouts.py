"""A database server that accepts connections and never answers must fail a stage, not hang
it (and with it the nightly run): every PostgreSQL client of the stack is libpq, which reads
``PGCONNECT_TIMEOUT`` from the project environment (tasks/core/environment.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from conftest import ROOT

from tasks.core.environment import state_variables

OPEN = """
import sys
from tasks.core.config import load_params
from tasks.tuning.storage import open_storage
try:
    open_storage(sys.argv[1], load_params())
except Exception as exc:  # what the tune stage turns into its one-line error
    print(type(exc).__name__, exc)
    sys.exit(3)
"""


def test_a_silent_database_fails_within_the_connect_timeout(tmp_path):
    assert state_variables(ROOT)["PGCONNECT_TIMEOUT"] == "10"
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (kernel backlog), never speaks
    port = silent.getsockname()[1]
    # The caller sets nothing: importing `tasks` sets the project's 10 s.
    env = {k: v for k, v in os.environ.items() if k != "PGCONNECT_TIMEOUT"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", OPEN, f"postgresql://finetune@127.0.0.1:{port}/optuna"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,  # the guard: without a connect timeout libpq waits for ever
        )
    finally:
        silent.close()
    assert done.returncode == 3, done.stderr[-2000:]
    assert "timeout expired" in done.stdout, done.stdout


def test_the_flows_temporary_prefect_server_gets_two_minutes_to_start():
    """`finetune run --flow` starts Prefect's temporary server: the project's 120 s start
    limit replaces Prefect's 20 s (which failed flows on a loaded machine); a user's own
    setting wins."""
    script = (
        "import tasks; from prefect.settings import "
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as limit; print(limit.value())"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPH")}
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.split()[-1] == "120"
    environment["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "300"
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment,
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.split()[-1] == "300"
