"""The Prefect flow: runs the DVC stages in order, one Prefect task per stage.

Each task runs ``dvc repro --single-item <stage>``, so DVC decides what is up to date and
writes ``dvc.lock`` as ``dvc repro`` would. A run with ``overrides``, ``preset`` or ``task``
is one DVC experiment instead (tasks/commands/experiments.py): ``params.yaml`` and
``dvc.lock`` stay as committed.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.runtime import deployment as prefect_deployment
from prefect.runtime import flow_run as prefect_flow_run
from prefect.tasks import exponential_backoff

from flows import nightly
from flows.artifacts import STAGE_REPORTS, publish_stage_artifact
from flows.dvc_run import stream_dvc
from flows.notify import notify_failure
from flows.settings import DeploymentSettings, project_of
from flows.settings import current as current_settings
from tasks.commands.experiments import (
    Experiment,
    ExperimentError,
    baseline_commit,
    check_name,
    run_experiment,
    set_param_args,
)
from tasks.commands.presets import load_preset
from tasks.core.config import ParamsError, load_params
from tasks.core.environment import state_dir
from tasks.core.tracking import describe_error, end_pipeline

# The exit code of a stage that rejected its input: never retried (a crash may be transient).
BAD_INPUT_EXIT = 1
_EXIT_CODE = re.compile(r"exited with (\d+)")
# This flow file's checkout: on a work-pool worker, its pull step's clone (PROJECT_ROOT could
# name another checkout through an editable install).
FLOW_PROJECT = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """A DVC stage's command failed; ``retryable`` is False when its input was rejected."""

    def __init__(self, stage: str, exit_code: int | None, output: str):
        self.stage, self.exit_code = stage, exit_code
        self.retryable = exit_code != BAD_INPUT_EXIT
        tail = "\n".join(output.strip().splitlines()[-15:])
        super().__init__(f"stage {stage!r} failed (exit code {exit_code}):\n{tail}")


def stage_order(project: Path, targets: list[str] | None = None) -> list[str]:
    """The stages of ``project``'s ``dvc.yaml`` in dependency order (upstream first), only
    ``targets`` and their dependencies when given; ``.dvc`` files are left out. Raises
    ValueError for a target that is not a stage."""
    import networkx as nx
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        order = list(nx.topological_sort(graph.reverse(copy=False)))
        by_name = {stage.name: stage for stage in order if isinstance(stage, PipelineStage)}
        wanted = set(by_name.values())
        if targets:
            unknown = [t for t in targets if t not in by_name]
            if unknown:
                known = ", ".join(by_name)
                raise ValueError(f"unknown stage(s) {', '.join(unknown)} (stages: {known})")
            wanted = set()
            for target in targets:
                wanted |= {by_name[target], *nx.descendants(graph, by_name[target])}
        pipeline = [stage for stage in order if isinstance(stage, PipelineStage)]
        return [stage.name for stage in pipeline if stage in wanted]


def _not_bad_input(task, task_run, state) -> bool:
    """Prefect's retry condition: retry anything but a stage that rejected its input."""
    try:
        state.result()
    except StageFailed as failure:
        return failure.retryable
    except TimeoutError:  # a stage past its timeout would hang again
        return False
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
    started = time.perf_counter()
    returncode, output = stream_dvc(["repro", "--single-item", stage], project)
    if returncode != 0:
        found = _EXIT_CODE.findall(output)
        failure = StageFailed(stage, int(found[-1]) if found else None, output)
        publish_stage_artifact(stage, project, failed=True)
        raise failure
    ran = f"Running stage '{stage}'" in output
    seconds = round(time.perf_counter() - started, 2)
    get_run_logger().info("%s %s in %.1f s", stage, "ran" if ran else "was up to date", seconds)
    if ran:
        publish_stage_artifact(stage, project)
    return {"stage": stage, "ran": ran, "seconds": seconds}


@task(task_run_name="dvc {action}", retries=2, retry_delay_seconds=exponential_backoff(10))
def sync_remote(action: str, project: Path) -> None:
    """``dvc pull --allow-missing`` or ``dvc push`` with the checkout's default remote."""
    arguments = ["pull", "--allow-missing"] if action == "pull" else ["push"]
    returncode, output = stream_dvc(arguments, project)
    if returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-10:])
        raise RuntimeError(f"dvc {action} failed in {project} (exit code {returncode}):\n{tail}")


@task(
    task_run_name="experiment {name}",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_condition_fn=_not_bad_input,
)
def run_as_experiment(
    name: str,
    project: Path,
    overrides: dict[str, Any],
    stages: list[str] | None = None,
    imports: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the stages as DVC experiment ``name``, streaming its log; publish its artifacts."""
    logger = get_run_logger()
    env = {"PIPELINE_FLOW_RUN_ID": str(prefect_flow_run.id or "")}
    try:
        done = run_experiment(
            project,
            overrides,
            name,
            targets=stages or [],
            imports=imports,
            on_line=logger.info,
            env=env,
        )
    except ExperimentError as exc:
        publish_experiment_artifact(name, overrides, failure=str(exc))
        raise StageFailed(exc.stage or "experiment", exc.exit_code, str(exc)) from None
    logger.info("experiment %s saved in %.1f s:\n%s", done.name, done.seconds, done.how_to_use())
    published = publish_experiment_reports(project, done.rev, stage_order(project, stages))
    publish_experiment_artifact(done.name, overrides, done=done)
    return {
        "experiment": done.name,
        "rev": done.rev,
        "baseline": done.baseline,
        "ran": done.ran,
        "cached": done.cached,
        "reports": published,
        "seconds": done.seconds,
    }


def publish_experiment_reports(project: Path, rev: str, stages: list[str]) -> list[str]:
    """The stage artifacts of an experiment, built from the report files saved in it."""
    from dvc.api import DVCFileSystem

    published = []
    fs = DVCFileSystem(str(project), rev=rev)
    with tempfile.TemporaryDirectory(prefix="experiment-reports-") as tmp:
        for stage in stages:
            relative = STAGE_REPORTS.get(stage)
            if relative is None or not fs.exists(relative):
                continue
            target = Path(tmp) / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(relative, str(target))
            key = publish_stage_artifact(stage, Path(tmp))
            if key:
                published.append(key)
    return published


def publish_experiment_artifact(
    name: str, overrides: dict[str, Any], done: Experiment | None = None, failure: str = ""
) -> str:
    """A markdown artifact (key ``experiment``) naming the experiment and how to use it."""
    from prefect.artifacts import create_markdown_artifact

    rows = "\n".join(f"| `{key}` | `{value!r}` |" for key, value in overrides.items())
    lines = [f"## DVC experiment `{name}`", "", "| params key | value |", "|---|---|", rows, ""]
    if done is None:
        lines += ["**Failed**; nothing was saved.", "", "```", failure[-3000:], "```"]
    else:
        lines += [
            f"Baseline commit `{done.baseline[:7]}`, experiment commit `{done.rev[:7]}`; the "
            "project's `params.yaml` and `dvc.lock` are unchanged.",
            f"Stages run: {', '.join(done.ran) or 'none'}; restored from DVC's run cache: "
            f"{', '.join(done.cached) or 'none'}.",
            "",
            "```",
            done.how_to_use(),
            "```",
        ]
    description = f"experiment {name}" + (" failed" if done is None else "")
    return str(
        create_markdown_artifact(
            key="experiment", markdown="\n".join(lines), description=description
        )
    )


@flow(name="training-pipeline", log_prints=True, on_failure=[notify_failure])
def training_pipeline(
    overrides: dict[str, Any] | None = None,
    task: str | None = None,
    preset: str | None = None,
    retries: dict[str, int] | None = None,
    stages: list[str] | None = None,
    experiment: str | None = None,
    sync_remote_data: bool = False,
    update_imports: bool = False,
) -> list[dict[str, Any]]:
    """Run every DVC stage in order, unchanged ones skipped; with ``overrides``, ``preset`` or
    ``task``, one DVC experiment. Project, allowed keys, timeouts: flows/settings.py.

    Args:
        overrides: dotted params, e.g. ``{"prepare.seed": 7}``; only keys the deployment allows.
        task: shortcut for ``overrides["task"]``.
        preset: ``presets/NAME.yaml``; ``overrides`` and ``task`` apply on top of it.
        retries: retries per stage name, or ``experiment`` (default 1; never for bad input).
        stages: run only these stages and the ones they depend on (default: all).
        experiment: the experiment's name (default: the preset's, else the flow run's).
        sync_remote_data: ``dvc pull`` before the stages and ``dvc push`` after them.
        update_imports: ``dvc update`` the ``data/external/`` imports first and publish the
            ``nightly-summary`` artifact (flows/nightly.py). Not for experiments.

    Returns one record per stage (name, ran, seconds) or the experiment's. Raises ValueError
    before any stage runs: a key or preset not allowed, a bad value, stage or name.
    """
    settings, project, overrides, imports = _checked_run(overrides, task, preset, stages)
    retries = retries or {}
    if preset is not None or overrides:
        name = experiment or preset or prefect_flow_run.name or "flow-run"
        return [_run_experiment(name, project, settings, overrides, stages, imports, retries)]
    return _run_stages(project, settings, stages, retries, sync_remote_data, update_imports)


def _run_experiment(
    name: str,
    project: Path,
    settings: DeploymentSettings,
    overrides: dict[str, Any],
    stages: list[str] | None,
    imports: dict[str, str],
    retries: dict[str, int],
) -> dict[str, Any]:
    """The run as one DVC experiment task; ValueError for a bad name or no git commit."""
    try:
        check_name(name)
        baseline_commit(project)
    except ExperimentError as exc:
        raise ValueError(str(exc)) from None
    runner = run_as_experiment.with_options(
        timeout_seconds=settings.timeout("experiment"),
        retries=retries.get("experiment", run_as_experiment.retries),
    )
    return runner(name, project, overrides, stages, imports)


def _run_stages(
    project: Path,
    settings: DeploymentSettings,
    stages: list[str] | None,
    retries: dict[str, int],
    sync_remote_data: bool,
    update_imports: bool,
) -> list[dict[str, Any]]:
    """The plain run of :func:`training_pipeline`: one task per stage in the workspace."""
    results = []
    try:
        if sync_remote_data:
            sync_remote("pull", project)
        if update_imports:
            before = nightly.snapshot(project)
            imports = nightly.refresh_imports(project)
        for stage in stage_order(project, stages):
            runner = run_stage.with_options(
                timeout_seconds=settings.timeout(stage),
                retries=retries.get(stage, run_stage.retries),
            )
            results.append(runner(stage, project))
        if sync_remote_data:
            sync_remote("push", project)
    except BaseException as exc:
        end_parent_run(project, describe_error(exc))
        raise
    end_parent_run(project)
    if update_imports:
        nightly.publish_summary(project, before, imports, [r["stage"] for r in results if r["ran"]])
    return results


def _checked_run(
    overrides: dict[str, Any] | None,
    task: str | None,
    preset: str | None,
    stages: list[str] | None,
) -> tuple[DeploymentSettings, Path, dict[str, Any], dict[str, str]]:
    """The deployment's settings, project, overrides and imports, checked (ValueError)."""
    settings, who = current_settings(prefect_deployment.name)
    project = project_of(settings, FLOW_PROJECT)
    overrides = dict(overrides or {})
    if task is not None:
        overrides["task"] = task
    settings.check_run(overrides, preset, who)  # first: nothing of the run is used before
    stage_order(project, stages)
    imports: dict[str, str] = {}
    try:
        if preset is not None:
            chosen = load_preset(preset, project / "presets")
            overrides = {**chosen.params, **overrides}
            imports = chosen.data_imports(project)  # imported before: never a path from a run
        if preset is not None or overrides:
            set_param_args(project / "params.yaml", overrides)
        else:
            load_params(project / "params.yaml")
    except (ParamsError, ExperimentError) as exc:
        raise ValueError(str(exc)) from None
    return settings, project, overrides, imports


def end_parent_run(project: Path, error: str | None = None) -> None:
    """End this flow run's MLflow parent run: FINISHED, or FAILED with ``error``."""
    execution = str(prefect_flow_run.id or "")
    if execution:
        params = load_params(project / "params.yaml")
        end_pipeline(params, execution, error, state_dir(project))


if __name__ == "__main__":
    training_pipeline()
