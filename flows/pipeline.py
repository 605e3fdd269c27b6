"""The Prefect flow: runs the DVC stages in order, one Prefect task per stage.

Prefect adds retries, schedules, logs and artifacts; it does not re-implement any stage.
Each task runs ``dvc repro --single-item <stage>``, so DVC decides what is up to date, writes
``dvc.lock`` exactly as ``dvc repro`` would, and both drivers skip unchanged stages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run as prefect_flow_run
from prefect.tasks import exponential_backoff

from flows.artifacts import publish_stage_artifact
from tasks.config import ParamsError, load_params
from tasks.environment import PROJECT_ROOT
from tasks.presets import load_preset, write_overrides

# A stage that exits with this code rejected its input (bad data, failed gate): running it
# again cannot help, so it is never retried. Anything else (a crash, a kill) may be transient.
BAD_INPUT_EXIT = 1
_EXIT_CODE = re.compile(r"exited with (\d+)")


class StageFailed(RuntimeError):
    """A DVC stage's command failed; ``retryable`` is False when its input was rejected."""

    def __init__(self, stage: str, exit_code: int | None, output: str):
        self.stage, self.exit_code = stage, exit_code
        self.retryable = exit_code != BAD_INPUT_EXIT
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"stage {stage!r} failed (exit code {exit_code}):\n{tail}")


def stage_order(project: Path) -> list[str]:
    """The DVC stages of ``project`` in dependency order (upstream first)."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        return [stage.name for stage in nx.topological_sort(graph.reverse(copy=False))]


def _not_bad_input(task, task_run, state) -> bool:
    """Prefect's retry condition: retry anything but a stage that rejected its input."""
    try:
        state.result()
    except StageFailed as failure:
        return failure.retryable
    except Exception:
        return True
    return True


@task(
    task_run_name="{stage}",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_not_bad_input,
)
def run_stage(stage: str, project: Path) -> dict[str, Any]:
    """Reproduce one DVC stage (skipped by DVC when up to date), streaming its log lines."""
    logger = get_run_logger()
    started = time.perf_counter()
    command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        # Stages tag their MLflow runs with it: lineage from a model back to this flow run.
        "PIPELINE_FLOW_RUN_ID": str(prefect_flow_run.id or ""),
    }
    process = subprocess.Popen(
        command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.strip():
            logger.info(line.rstrip())
    process.wait()
    output = "".join(lines)
    if process.returncode != 0:
        found = _EXIT_CODE.findall(output)
        failure = StageFailed(stage, int(found[-1]) if found else None, output)
        publish_stage_artifact(stage, project, failed=True)
        raise failure
    ran = f"Running stage '{stage}'" in output
    seconds = round(time.perf_counter() - started, 2)
    logger.info("%s %s in %.1f s", stage, "ran" if ran else "was up to date", seconds)
    if ran:
        publish_stage_artifact(stage, project)
    return {"stage": stage, "ran": ran, "seconds": seconds}


@flow(name="training-pipeline", log_prints=True)
def training_pipeline(
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
    preset: str | None = None,
    retries: dict[str, int] | None = None,
    project_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Run every DVC stage in order; unchanged stages are skipped.

    Args:
        overrides: dotted params to change first, e.g. ``{"train.lr": 3e-5}``; validated by
            the typed params before any work and written to ``params.yaml`` (as
            ``dvc exp run -S`` does).
        task: shortcut for ``overrides["task"]``.
        preset: a ready-made configuration (``presets/NAME.yaml``, e.g. ``conll2003``),
            written first; ``overrides`` and ``task`` apply on top of it.
        retries: retries per stage name (default 1; bad input is never retried).
        project_dir: the project to run in (default: this checkout).

    Returns:
        One record per stage: name, whether it ran, seconds.
    """
    project = Path(project_dir) if project_dir else PROJECT_ROOT
    overrides = dict(overrides or {})
    if task is not None:
        overrides["task"] = task
    try:
        if preset is not None:
            overrides = {**load_preset(preset, project / "presets"), **overrides}
        if overrides:
            write_overrides(project / "params.yaml", overrides)
        else:
            load_params(project / "params.yaml")
    except ParamsError as exc:
        raise ValueError(str(exc)) from None
    results = []
    for stage in stage_order(project):
        runner = run_stage
        if retries and stage in retries:
            runner = run_stage.with_options(retries=retries[stage])
        results.append(runner(stage, project))
    return results


if __name__ == "__main__":
    training_pipeline()
