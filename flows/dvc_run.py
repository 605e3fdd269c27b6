"""DVC commands run from the flow, streamed to the Prefect log, stopped on timeout or cancel."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import flow_run as prefect_flow_run


def stream_dvc(arguments: list[str], project: Path) -> tuple[int, str]:
    """Run ``dvc ARGUMENTS`` in ``project``, logging each line; return (exit code, output)."""
    logger = get_run_logger()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # Stages tag their MLflow runs with it: lineage from a model back to this flow run.
        "PIPELINE_FLOW_RUN_ID": str(prefect_flow_run.id or ""),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", *arguments],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout stops the stage with it
    )
    lines = []
    assert process.stdout is not None
    try:
        for line in process.stdout:
            lines.append(line)
            if line.strip():
                logger.info(line.rstrip())
        process.wait()
    finally:  # a task timeout (or a cancelled flow run) interrupts the loop: stop dvc too
        _stop_group(process)
    return process.returncode, "".join(lines)


def _stop_group(process: subprocess.Popen) -> None:
    """Terminate, then kill, ``process``'s group (gap: a Prefect timeout leaves it running)."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
