"""Process environment: no telemetry, and all tool state (the Hugging Face cache included)
inside the project."""

from __future__ import annotations

import logging
import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def state_dir(root: Path = PROJECT_ROOT) -> Path:
    """Where tool state lives: ``root/.state``, or, in a stage of a DVC experiment, the
    ``.state`` of the repository that started it.

    ``dvc exp run --temp`` (and ``--queue``) runs the stages in a throwaway copy under
    ``.dvc/tmp/exps/``, setting ``DVC_EXP_NAME`` and ``DVC_ROOT`` (the repository that runs
    the experiment) for every stage command: the MLflow store and registry, Optuna studies,
    checkpoints and caches of an experiment are then the user's own, not the copy's.
    """
    if os.environ.get("DVC_EXP_NAME") and os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve() / ".state"
    return root / ".state"


STATE_DIR = state_dir()


def state_variables(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Environment variables that keep the stack quiet and inside ``root``."""
    state = state_dir(root)
    return {
        # The model hub is reached only to download a pinned hub model once
        # (tasks/core/pretrained/hub.py);
        # offline use is the user's setting (HF_HUB_OFFLINE=1), and the tests'. Datasets never
        # come from the hub.
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": str(state / "hf"),
        # Telemetry and update checks off.
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        # Tool homes and caches inside the project (git-ignored).
        "PREFECT_HOME": str(state / "prefect"),
        "DVC_SITE_CACHE_DIR": str(state / "dvc-site-cache"),
        "MPLCONFIGDIR": str(state / "matplotlib"),
        "PIP_CACHE_DIR": str(state / "pip-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        # Quiet: no download/loading bars ("Loading weights", "Writing model shards") and no
        # advice meant for library developers; the stages report their own progress.
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        # Scratch files of every library (and pytest's tmp_path) stay in the project too.
        "TMPDIR": str(state / "tmp"),
        # PostgreSQL passwords: libpq reads them here when a URL has none (params never hold
        # one); `finetune servers url NAME` writes the entries.
        "PGPASSFILE": str(state / "pgpass"),
        # A PostgreSQL server that does not answer (Optuna, MLflow, psycopg2 all use libpq):
        # fail after 10 s instead of hanging a stage or the nightly run.
        "PGCONNECT_TIMEOUT": "10",
    }


def private_state_dir(root: Path = PROJECT_ROOT) -> Path:
    """Create the state directory mode 0700 (passwords, databases and models of one user
    live there); an existing one loses group and other read/write bits (listing, writing),
    keeping only their execute bit (PostgreSQL run as its own user by root needs it)."""
    state = state_dir(root)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = state.stat().st_mode & 0o777
    if mode & 0o066 and state.stat().st_uid == os.geteuid():
        state.chmod(mode & ~0o066)
    return state


def configure_environment(root: Path = PROJECT_ROOT) -> None:
    """Set the variables from :func:`state_variables` unless the caller already set them,
    and silence library messages that do not concern the user (:func:`quiet_libraries`)."""
    for name, value in state_variables(root).items():
        os.environ.setdefault(name, value)
    private_state_dir(root)
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)
    quiet_libraries()


# Messages of libraries that are noise here, by logger: offline, the hub's model card and
# license cannot be fetched (and a local start point has none); MLflow's database set-up.
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
    """Drop library warnings and log lines that do not concern the user, at their source
    (their loggers; nothing is imported here)."""
    for name, fragments in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
    logging.getLogger("alembic").setLevel(logging.WARNING)  # MLflow's schema migrations
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # "generated new fontManager"
    for name in ("httpx", "httpx2"):  # one line per HTTP request (hub downloads, Prefect API)
        logging.getLogger(name).setLevel(logging.WARNING)
