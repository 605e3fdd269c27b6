"""Where the pipeline's files live, declared once: the folders of ``dvc.yaml`` (relative: any
checkout's layout; ``*_DIR``: this checkout's, the stages' defaults).
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.environment import PROJECT_ROOT

PARAMS_FILE = Path("params.yaml")
# The folders DVC tracks for the user's inputs (dependencies in dvc.yaml).
EXTERNAL_DATA_DIR = Path("data", "external")  # prepare
PRETRAINED_DIR = Path("models", "pretrained")  # tokenize, tune, train
RAW = Path("data", "raw")  # prepare: the built-in datasets' archives
PREPARED = Path("data", "prepared")  # prepare -> validate, tokenize, register, report
TOKENIZED = Path("data", "tokenized")  # tokenize -> tune, train, evaluate
MODEL = Path("models", "model")  # train -> evaluate, register
REPORTS = Path("reports")  # every stage's reports and metrics

DEFAULT_PARAMS = PROJECT_ROOT / PARAMS_FILE
RAW_DIR = PROJECT_ROOT / RAW
PREPARED_DIR = PROJECT_ROOT / PREPARED
TOKENIZED_DIR = PROJECT_ROOT / TOKENIZED
MODEL_DIR = PROJECT_ROOT / MODEL
REPORTS_DIR = PROJECT_ROOT / REPORTS


def project_relative(path: Path) -> str:
    """``path`` as outputs record it: relative to the project root when inside it (the same in
    every checkout, as DVC's contract wants), else as given."""
    path = Path(path)
    inside = path.is_absolute() and path.is_relative_to(PROJECT_ROOT)
    return path.relative_to(PROJECT_ROOT).as_posix() if inside else path.as_posix()
