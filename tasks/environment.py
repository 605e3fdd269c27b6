"""Process environment: offline mode, no telemetry, and all tool state inside the project."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STATE_DIR = PROJECT_ROOT / ".state"


def state_variables(root: Path = PROJECT_ROOT) -> dict[str, str]:
    """Environment variables that keep the stack offline, quiet and inside ``root``."""
    state = root / ".state"
    return {
        # No model hub: weights come from local directories or installed packages only.
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
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
        # Scratch files of every library (and pytest's tmp_path) stay in the project too.
        "TMPDIR": str(state / "tmp"),
    }


def configure_environment(root: Path = PROJECT_ROOT) -> None:
    """Set the variables from :func:`state_variables` unless the caller already set them."""
    for name, value in state_variables(root).items():
        os.environ.setdefault(name, value)
    Path(os.environ["TMPDIR"]).mkdir(parents=True, exist_ok=True)
