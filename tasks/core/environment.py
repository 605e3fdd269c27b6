"""Process environment: no telemetry, and all tool state (the Hugging Face cache included)
inside the project."""

from __future__ import annotations

import logging
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def state_dir(root: Path = PROJECT_ROOT) -> Path:
    """Where tool state lives: ``root/.state``, or in a DVC experiment's stage (run in a
    throwaway copy) the ``.state`` of the repository that started it (``DVC_ROOT``)."""
    if os.environ.get("DVC_EXP_NAME") and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve() / ".state"
    return root / ".state"


STATE_DIR = state_dir()


def state_variables(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Environment variables that keep the stack quiet and inside ``root``."""
    state = state_dir(root)
    return {
        # the hub is only reached for a pinned model (HF_HUB_OFFLINE is the user's setting)
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(state / "hf"),
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "PREFECT_HOME": str(state / "prefect"),
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site-cache"),
        "MPLCONFIGDIR": str(state / "matplotlib"),
        "PIP_CACHE_DIR": str(state / "pip-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TMPDIR": str(state / "tmp"),
        # libpq's passwords (params never hold one; `finetune servers url` writes them)
        "PGPASSFILE": str(state / "pgpass"),
        # a PostgreSQL server that does not answer fails a stage instead of hanging it
        "PGCONNECT_TIMEOUT": "10",
        # `finetune run --flow` starts a temporary Prefect server; Prefect's 20 s start limit
        # failed the flow on a loaded machine (a training beside the test suite)
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }


def private_state_dir(root: Path = PROJECT_ROOT) -> Path:
    """Create the state directory mode 0700 (one user's passwords, databases, models); an
    existing one loses group/other read and write bits (execute stays: PostgreSQL needs it)."""
    state = state_dir(root)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = state.stat().st_mode & 0o777
    if mode & 0o066 and state.stat().st_uid == os.geteuid():
        state.chmod(mode & ~0o066)
    return state


def configure_environment(root: Path = PROJECT_ROOT) -> None:
    """Set :func:`state_variables` unless already set, and :func:`quiet_libraries`."""
    for name, value in state_variables(root).items():
        os.environ.setdefault(name, value)
    private_state_dir(root)
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    quiet_libraries()


# Library messages that are noise here, by logger.
_DROPPED = {
    "mlflow.transformers": ("model card could not be retrieved", "license"),
    "mlflow.store.db.utils": ("Creating initial MLflow database", "Updating database tables"),
}


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def quiet_libraries() -> None:
    """Drop library log lines that do not concern the user (at their loggers)."""
    for name, fragments in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # MLflow's schema migrations
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager"
    for name in ("httpx", "httpx2"):  # one line per HTTP request (hub downloads, Prefect API)
        logging.getLogger(name).setLevel(logging.WARNING)
