"""MLflow tracking: where runs go, the run tree of one pipeline execution, and lineage tags.

One execution is one parent run; each logging stage opens a child run under it (tuning
trials are grandchildren). The execution is ``PIPELINE_RUN_ID`` (or the Prefect flow run
id, or under a bare ``dvc repro`` the ``dvc`` process); whoever passes the id ends the
parent run (:func:`end_execution`, :func:`end_pipeline`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import yaml

from tasks.core.config import Params, ParamsError, hide_password, load_params
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.environment import state_dir as state_dir_of
from tasks.core.errors import HubError, StageError
from tasks.core.paths import PARAMS_FILE, PREPARED

PIPELINE_TAG = "pipeline.id"
STAGE_TAG = "pipeline.stage"
ERROR_TAG = "error"
# Makes MLflow 3's UI open the experiment on its runs list, not the GenAI traces overview.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def default_tracking_uri(state_dir: Path = STATE_DIR) -> str:
    """``tracking.uri: null``: an SQLite database inside the project's state directory."""
    return f"sqlite:///{(state_dir / 'mlflow' / 'mlflow.db').resolve()}"


def tracking_uri(params: Params, state_dir: Path = STATE_DIR) -> str:
    """``tracking.uri``, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store."""
    return store_uri(params.tracking.uri, state_dir)


def store_uri(configured: str | None, state_dir: Path = STATE_DIR) -> str:
    """``configured``, else ``MLFLOW_TRACKING_URI``, else the project's SQLite store."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(state_dir)


def use_store(params: Params, state_dir: Path = STATE_DIR) -> str:
    """Point MLflow's tracking and registry at the configured store; return its URI."""
    import mlflow

    uri = tracking_uri(params, state_dir)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_RETRIES.items():  # the user's own settings win
            os.environ.setdefault(name, value)
        require_server(uri, "tracking.uri" if params.tracking.uri else "MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


SERVER_TRIES = (0, 1, 2, 4)  # seconds to wait before each try of an unreachable server
# MLflow's default (7 retries, backoff 2: ~4 minutes) holds a stage whose server died.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


def require_server(uri: str, key: str) -> None:
    """Raise a one-line StageError naming ``key`` when the server at ``uri`` does not answer
    (MLflow's client retries for minutes, then raises a traceback naming no setting)."""
    import time
    import urllib.error
    import urllib.request

    reason = ""
    for delay in SERVER_TRIES:
        time.sleep(delay)
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                return
        except urllib.error.HTTPError:
            return  # the server answered (a proxy may not know /health)
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
    raise StageError(
        f"{key}: the MLflow server {uri} does not answer ({reason}; {len(SERVER_TRIES)} tries "
        f"over {sum(SERVER_TRIES)} s). Start it, or set tracking.uri: null to use the "
        "project's SQLite store; nothing was recorded"
    )


def configure(params: Params, state_dir: Path = STATE_DIR) -> str:
    """Point MLflow at the tracking store and experiment; return the experiment id."""
    import mlflow

    uri = use_store(params, state_dir)
    if params.tracking.system_metrics_interval:
        mlflow.set_system_metrics_sampling_interval(params.tracking.system_metrics_interval)
        mlflow.set_system_metrics_samples_before_logging(1)
    name = params.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:  # a store from before the tag
            mlflow.MlflowClient().set_experiment_tag(
                experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        mlflow.set_experiment(name)
        return experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, never in ./mlruns
        location = (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    try:
        experiment_id = mlflow.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    except mlflow.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # another pipeline on the same store created it between our lookup and create
        experiment_id = mlflow.get_experiment_by_name(name).experiment_id
    mlflow.set_experiment(name)
    return experiment_id


def registered_model_name(params: Params) -> str:
    """``register.model_name``, or with ``auto`` ``{data}-{text|token}-classifier`` (data:
    the built-in dataset's name or the user's file stem), one name per data and task."""
    import re

    name = params.register_.model_name
    if name != "auto":
        return name
    source = params.data.source
    if isinstance(source, str):
        data = source
    else:
        file = source.path or source.train
        data = re.sub(r"[^\w.-]+", "-", Path(file).stem).strip("-._") if file else ""
    kind = "token" if params.task == "token_classification" else "text"
    return f"{data or 'custom'}-{kind}-classifier"


PIPELINE_RUN_ENV = "PIPELINE_RUN_ID"


def new_pipeline_id() -> str:
    """A fresh execution id, for the stages one command starts (in ``PIPELINE_RUN_ENV``)."""
    return f"run-{uuid.uuid4().hex[:12]}"


def pipeline_id() -> str:
    """The id shared by every stage of one pipeline execution (see the module docstring)."""
    explicit = os.environ.get(PIPELINE_RUN_ENV) or os.environ.get("PIPELINE_FLOW_RUN_ID")
    if explicit:
        return explicit
    import psutil

    # A bare `dvc repro`/`dvc exp run` passes no id: its dvc ancestor process identifies it.
    with contextlib.suppress(psutil.Error):
        for ancestor in psutil.Process().parents():
            command = " ".join(ancestor.cmdline())
            if "dvc" in command and (" repro" in command or " exp" in command):
                return f"dvc-{ancestor.pid}-{int(ancestor.create_time())}"
    return f"run-{uuid.uuid4().hex[:12]}"


def parent_run_id(
    experiment_id: str, execution: str, params: Params, project: Path = PROJECT_ROOT
) -> str:
    """Find or create ``execution``'s parent run (RUNNING, with lineage tags and params);
    :func:`stage_run` and :func:`end_pipeline` end it."""
    import mlflow

    client = mlflow.MlflowClient()
    found = find_parent(experiment_id, execution)
    if found is not None:
        return found
    # The device is each model stage's own tag: finding it here would import torch (about
    # 2 s) in whichever stage opens the parent run first, usually tokenize.
    tags = lineage_tags(project, device=False)
    run = client.create_run(
        experiment_id,
        run_name=pipeline_run_name(project, tags.get("git.commit", "")),
        tags={PIPELINE_TAG: execution, STAGE_TAG: "pipeline", **tags},
    )
    run_id = run.info.run_id
    log_params(client, run_id, params)
    for report in (
        "data/prepared/summary.json",
        "reports/validation.md",
        "reports/validation.json",
    ):
        if (project / report).exists():
            client.log_artifact(run_id, str(project / report), artifact_path="data")
    log_datasets(project, ("train", "validation", "test"), run_id)  # keeps the run RUNNING
    return run_id


def find_parent(experiment_id: str, execution: str) -> str | None:
    """The id of ``execution``'s parent run, if one was created."""
    import mlflow

    found = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{PIPELINE_TAG}` = '{execution}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
    )
    return found[0].info.run_id if found else None


def pipeline_run_name(project: Path, commit: str) -> str:
    """A readable run name: data, task, start time, commit. Data and task come from
    ``summary.json``, so naming a run adds no dependency on ``data.source``."""
    import datetime
    import json

    summary_path = project / PREPARED / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    data = str(summary.get("source", "data")).replace(" ", "-")
    task = str(summary.get("task", "pipeline"))
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    short = commit[:7] if commit and commit != "unknown" else "no-commit"
    return f"{data} {task} {when} {short}"


def last_stage(project: Path = PROJECT_ROOT) -> str | None:
    """The last stage of ``project``'s ``dvc.yaml`` (the one that ends a whole run)."""
    path = project / "dvc.yaml"
    if not path.exists():
        return None
    stages = list(_read_dvc_file(path).get("stages", {}))
    return stages[-1] if stages else None


def _read_dvc_file(path: Path) -> dict[str, Any]:
    """``dvc.yaml`` or ``dvc.lock`` (written by DVC, never by hand) through libyaml's C loader
    where PyYAML has it: every stage reads them at start and end, and the pure-Python loader
    took 8x longer on a full pipeline's lock (bench/RESULTS.md, "stage start-up")."""
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def describe_error(exc: BaseException) -> str:
    """An exception as one tag value: its type and message, cut to MLflow's tag limit."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        text = "interrupted"
    return f"{type(exc).__name__}: {text}"[:4000]


def end_pipeline(
    params: Params, execution: str, error: str | None = None, state_dir: Path = STATE_DIR
) -> str | None:
    """End ``execution``'s parent run (in any experiment): FINISHED, or FAILED with ``error``
    as its tag unless a failed stage set one. Returns its id; None when there is none."""
    import mlflow

    uri = tracking_uri(params, state_dir)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return None
    use_store(params, state_dir)
    found = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"tags.`{PIPELINE_TAG}` = '{execution}' and tags.`{STAGE_TAG}` = 'pipeline'",
        max_results=1,
        output_format="list",
    )
    if not found:
        return None
    parent = found[0]
    client = mlflow.MlflowClient()
    if error is not None and ERROR_TAG not in parent.data.tags:
        client.set_tag(parent.info.run_id, ERROR_TAG, error[:4000])
    client.set_terminated(parent.info.run_id, "FAILED" if error is not None else "FINISHED")
    return parent.info.run_id


def end_execution(project: Path, execution: str, returncode: int) -> None:
    """End ``execution``'s parent run by the DVC command's exit code (also after ``--stage``
    or a killed stage); an unreachable store is only logged as a warning."""
    import logging

    from mlflow.exceptions import MlflowException

    error = None if returncode == 0 else f"the DVC command exited with code {returncode}"
    try:
        params = load_params(project / PARAMS_FILE)
        end_pipeline(params, execution, error, state_dir_of(project))
    except (MlflowException, StageError, ParamsError) as exc:
        message = " ".join(str(exc).split())[:300]
        logging.getLogger(__name__).warning("could not end MLflow run %s: %s", execution, message)


SYSTEM_METRICS_STAGES = ("train", "tune")
# Stages that run a model: their runs carry the ``device`` tag (finding it imports torch).
MODEL_STAGES = ("tune", "train", "evaluate", "register")


def system_metrics(params: Params, stage: str) -> bool:
    """Whether ``stage``'s runs log MLflow system metrics (``tracking.system_metrics_interval``)."""
    return stage in SYSTEM_METRICS_STAGES and params.tracking.system_metrics_interval > 0


@contextlib.contextmanager
def stage_run(
    params: Params, stage: str, state_dir: Path = STATE_DIR, project: Path = PROJECT_ROOT
) -> Iterator[Any]:
    """Open ``stage``'s child run (with lineage tags and params) under the execution's parent
    run, active in the block. It ends FINISHED, or FAILED (KILLED on Ctrl-C) with an
    ``error`` tag, and then the parent too; the last stage of ``dvc.yaml`` ends the parent.
    Raises StageError (one line) when the tracking server is lost.
    """
    import mlflow

    client, parent, run = _start_stage_run(params, stage, state_dir, project)
    try:
        log_params(client, run.info.run_id, params)
        yield run
    except BaseException as exc:
        lost = server_lost(exc)
        if lost is not None:  # nothing can be marked on a server that is gone
            uri = tracking_uri(params, state_dir)
            raise StageError(server_lost_message(uri, stage, lost)) from None
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        error = describe_error(exc)
        try:
            client.set_tag(run.info.run_id, ERROR_TAG, error)
            client.set_tag(parent, ERROR_TAG, f"{stage}: {error}"[:4000])
            mlflow.end_run(status)
            client.set_terminated(parent, status)
        except Exception as marking:  # the server went away while the failure was recorded
            if server_lost(marking) is None:
                raise
            uri = tracking_uri(params, state_dir)
            raise StageError(server_lost_message(uri, stage, marking)) from None
        raise
    mlflow.end_run("FINISHED")
    if stage == last_stage(project):
        client.set_terminated(parent, "FINISHED")


def _start_stage_run(
    params: Params, stage: str, state_dir: Path, project: Path
) -> tuple[Any, str, Any]:
    """(client, parent run id, child run) of :func:`stage_run`; StageError if the store fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        experiment_id = configure(params, state_dir)
        execution = pipeline_id()
        parent = parent_run_id(experiment_id, execution, params, project)
        client = mlflow.MlflowClient()
        if client.get_run(parent).info.status != "RUNNING":  # a retried or resumed execution
            client.update_run(parent, status="RUNNING")
        lineage = lineage_tags(project, device=stage in MODEL_STAGES)
        tags = {PIPELINE_TAG: execution, STAGE_TAG: stage, **lineage}
        run = mlflow.start_run(
            run_name=stage,
            parent_run_id=parent,
            nested=True,
            tags=tags,
            experiment_id=experiment_id,
            log_system_metrics=system_metrics(params, stage),
        )
    except MlflowException as exc:  # e.g. a full disk under the SQLite store: one line, no work
        message = " ".join(str(exc).split())
        raise StageError(
            f"tracking.uri: the MLflow store {tracking_uri(params, state_dir)} failed before "
            f"the stage started: {message[:300]}"
        ) from None
    return client, parent, run


_CONNECTION_LOST = re.compile(
    r"Max retries exceeded|Failed to establish a new connection|Connection refused|"
    r"Connection aborted|RemoteDisconnected|Connection broken|IncompleteRead"
)

_REASON = re.compile(r"\[Errno -?\d+\] [^')\]]+|Connection refused|Connection reset[^')]*")


def server_lost(exc: BaseException) -> BaseException | None:
    """The connection error in ``exc``'s chain when the tracking server stopped answering."""
    import requests

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, HubError):  # the model hub's connection, not the tracking server's
            return None
        if isinstance(
            exc, requests.exceptions.ConnectionError | requests.exceptions.ChunkedEncodingError
        ):
            return exc
        # parallel artifact uploads fail with text only, the chain cut
        if isinstance(exc, Exception) and _CONNECTION_LOST.search(str(exc)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def server_lost_message(uri: str, stage: str, cause: BaseException) -> str:
    """One line for a tracking server lost mid-stage: which, after how many tries, what to do."""
    tries = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")) + 1
    found = _REASON.search(str(cause))
    reason = found.group(0) if found else type(cause).__name__
    return (
        f"tracking.uri: the MLflow server {uri} stopped answering during {stage} ({reason}; "
        f"{tries} tries with backoff). Start it again (make tracking-server) and run "
        "`dvc repro`: the stage's outputs and the registry are as before it started"
    )


def log_params(client: Any, run_id: str, params: Params) -> None:
    """The resolved params as flat keys (``train.learning_rate``), URL passwords masked."""
    from mlflow.entities import Param

    flat = mlflow_names(flatten(params.model_dump(by_alias=True, mode="json")))
    entries = [Param(key, hide_password(str(value))[:6000]) for key, value in flat.items()]
    for start in range(0, len(entries), 100):
        client.log_batch(run_id, params=entries[start : start + 100])


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``)."""
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat |= flatten(value, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): data}


# MLflow rejects a whole batch for one key outside these (label names can hold anything).
_UNSAFE_NAME_CHARS = re.compile(r"[^\w\-. :/]")


def mlflow_names(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with keys MLflow accepts (``_`` for others; a hash suffix on a collision)."""
    safe: dict[str, Any] = {}
    for key, value in values.items():
        name = _UNSAFE_NAME_CHARS.sub("_", key)
        if name != key and name in safe | values:
            name = f"{name}_{hashlib.sha1(key.encode()).hexdigest()[:6]}"
        safe[name] = value
    return safe


def lineage_tags(project: Path = PROJECT_ROOT, device: bool = True) -> dict[str, str]:
    """Git commit and dirtiness, DVC data hashes, Prefect flow run, versions, and the compute
    device unless ``device`` is off (a stage that runs no model: torch is not imported)."""
    tags = {"torch.version": version("torch"), "transformers.version": version("transformers")}
    if device:
        tags["device"] = device_name()
    tags |= git_state(project)
    tags |= {f"dvc.{path}": digest for path, digest in dvc_hashes(project).items()}
    flow_run = os.environ.get("PIPELINE_FLOW_RUN_ID")
    if flow_run:
        tags["prefect.flow_run_id"] = flow_run
    experiment = os.environ.get("DVC_EXP_NAME")  # set by DVC in every stage of an experiment
    if experiment:
        tags["dvc.experiment"] = experiment
    return tags


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda: {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"cpu: {cpu} ({os.cpu_count()} threads)"


def git_state(project: Path = PROJECT_ROOT) -> dict[str, str]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=project, capture_output=True, text=True, check=False
        )
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "unknown"}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower()}


def dvc_hashes(project: Path = PROJECT_ROOT) -> dict[str, str]:
    """Content hashes DVC recorded in ``dvc.lock`` for the data outputs (``data/...``)."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return {}
    stages = _read_dvc_file(lock).get("stages", {})
    hashes = {}
    for stage in stages.values():
        for out in stage.get("outs", []):
            if out["path"].startswith("data/") and out.get("md5"):
                hashes[out["path"]] = out["md5"]
    return hashes


def log_datasets(project: Path, splits: tuple[str, ...], run_id: str | None = None) -> None:
    """The prepared splits as dataset inputs of ``run_id`` (default: active run), digest =
    DVC's hash. Only metadata: no rows are read, so the test split is never looked at."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    hashes = dvc_hashes(project)
    inputs = []
    for split in splits:
        path = project / PREPARED / f"{split}.parquet"
        digest = hashes.get(f"data/prepared/{split}.parquet")
        if not path.exists() or digest is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MLflow warns about guessing the source type
            source = resolve_dataset_source(str(path.resolve()))
        dataset = MetaDataset(source, name=split, digest=digest)._to_mlflow_entity()
        inputs.append(DatasetInput(dataset, [InputTag(MLFLOW_DATASET_CONTEXT, split)]))
    if inputs:
        run_id = run_id or mlflow.active_run().info.run_id
        _log_inputs(mlflow.MlflowClient(), run_id, inputs)


def log_model_metrics(
    client: Any, name: str, version: str, metrics: dict[str, Any], prepared: Path, digest: str
) -> None:
    """The test scores as MLflow 3 model metrics of ``version``'s logged model, linked to the
    test split by name and ``digest``, in the active run."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    registered = client.get_model_version(name, version)
    # The SQL registry does not keep model_id; a version's source is models:/<model_id>.
    model_id = registered.model_id or registered.source.removeprefix("models:/")
    if not model_id.startswith("m-"):  # a version registered before MLflow 3 logged models
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLflow warns about guessing the source type
        source = resolve_dataset_source(str((prepared / "test.parquet").resolve()))
    scores = {
        f"test_{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and k != "samples"
    }
    dataset = MetaDataset(source, name="test", digest=digest)
    mlflow.log_metrics(scores, model_id=model_id, dataset=dataset)


def _log_inputs(client: Any, run_id: str, inputs: list[Any]) -> None:
    """``log_inputs``; two pipelines logging one dataset at once race on its row."""
    retry_insert_race(client.log_inputs, run_id, datasets=inputs)


def retry_insert_race(call: Any, *args: Any, tries: int = 3, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, retried when it lost an insert race on a UNIQUE row in
    MLflow's SQL store (read-then-insert ``session.merge``; two pipelines on one store)."""
    from mlflow.exceptions import MlflowException

    for attempt in range(tries):
        try:
            return call(*args, **kwargs)
        except MlflowException as exc:
            text = str(exc).lower()
            race = "unique" in text or "duplicate" in text or "integrityerror" in text
            if not race or attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def log_numbers(values: dict[str, Any], prefix: str = "", step: int | None = None) -> None:
    """Every number in ``values`` (nested keys flattened) as a metric of the active run."""
    import mlflow

    numbers = {
        f"{prefix}{key}": float(value)
        for key, value in mlflow_names(flatten(values)).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }
    if numbers:
        mlflow.log_metrics(numbers, step=step)


def log_to_parent(values: dict[str, Any], prefix: str = "") -> None:
    """Numbers of ``values`` also on the active stage run's parent (the runs list's columns)."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    tags = client.get_run(mlflow.active_run().info.run_id).data.tags
    parent = tags.get("mlflow.parentRunId")
    now = int(time.time() * 1000)
    metrics = [
        Metric(f"{prefix}{key}", float(value), now, 0)
        for key, value in mlflow_names(flatten(values)).items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    if parent and metrics:
        client.log_batch(parent, metrics=metrics)


def log_history(csv_path: Path, prefix: str) -> None:
    """A per-step CSV (a ``step`` column and numeric columns) as metrics with their step."""
    import csv

    if not csv_path.exists():
        return
    with csv_path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            values = {}
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                with contextlib.suppress(ValueError):
                    values[key] = float(value)
            log_numbers(values, prefix, step=int(float(row["step"])))
