"""Where studies live: Optuna's RDB storage with its heartbeat, and the dead-worker retry."""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial

from tasks.core.config import Params, hide_password
from tasks.core.environment import STATE_DIR

log = logging.getLogger("tasks.tune")


def storage_spec(params: Params, state_dir: Path = STATE_DIR) -> str:
    """``tune.storage``, or the single-machine default inside the project: SQLite."""
    if params.tune.storage:
        return params.tune.storage
    return f"sqlite:///{(Path(state_dir) / 'optuna' / 'optuna.db').resolve()}"


def describe_storage(spec: str) -> str:
    """The storage for reports and logs, without a password."""
    return hide_password(spec)


class RetryStaleTrial:
    """Re-queue a dead worker's trial with its values; end its MLflow run as FAILED."""

    def __init__(self, max_retry: int) -> None:
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        log.warning("trial %d: its worker stopped sending heartbeats; re-queued", trial.number)
        self.retry(study, trial)
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            with contextlib.suppress(Exception):
                import mlflow

                client = mlflow.MlflowClient()
                client.set_tag(run_id, "trial.state", "FAIL")
                client.set_terminated(run_id, "FAILED")


def open_storage(spec: str, params: Params) -> optuna.storages.BaseStorage:
    """Optuna's RDB storage of a SQLAlchemy URL with a heartbeat (stale trials re-queued)."""
    tune = params.tune
    engine: dict[str, Any] = {}
    if spec.startswith("sqlite:"):
        if spec.startswith("sqlite:///") and spec != "sqlite:///:memory:":
            Path(spec.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 60}}  # heartbeat thread + trial thread
    else:
        engine = {"pool_pre_ping": True}  # a server that restarted: reconnect, not fail
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        return _first_open(
            lambda: RDBStorage(
                spec,
                engine_kwargs=engine,
                heartbeat_interval=tune.heartbeat_interval,
                grace_period=tune.grace_period,
                heartbeat_stale_trial_callback=RetryStaleTrial(tune.max_retries),
            )
        )


def _first_open(open_rdb: Any, tries: int = 3) -> RDBStorage:
    """``RDBStorage``, tried again when another process created the schema at the same moment
    (gap: Optuna creates its tables without a lock, so one of two fails on a duplicate)."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(tries - 1):
        try:
            return open_rdb()
        except (IntegrityError, ProgrammingError) as exc:
            text = str(exc).lower()
            if "duplicate" not in text and "already exists" not in text:
                raise
            time.sleep(1.0 + attempt)
    return open_rdb()
