"""The tokenize stage's output as the later stages read it: ``data/tokenized/`` (one Hugging
Face dataset per split) and its ``manifest.json``. Here, not in the stage module, so that
train, tune and evaluate depend on the reader, not on how tokenize encodes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.config import SPLITS
from tasks.core.errors import StageError

MANIFEST = "manifest.json"


def read_manifest(tokenized_dir: Path, task: str | None = None) -> dict[str, Any]:
    """The manifest of the tokenized data; with ``task``, checked to describe that task's data
    (the one "this data holds task X" check of tune, train and evaluate).

    Raises:
        StageError: no manifest (tokenize has not run), or data of another task.
    """
    manifest_path = Path(tokenized_dir) / MANIFEST
    if not manifest_path.is_file():
        raise StageError(f"{manifest_path}: not found (run the tokenize stage first)")
    manifest = json.loads(manifest_path.read_text())
    if task is not None and manifest["task"] != task:
        raise StageError(
            f"{tokenized_dir} holds {manifest['task']} data but task is {task} (re-run tokenize)"
        )
    return manifest


def load_tokenized(
    tokenized_dir: Path, task: str | None = None, splits: tuple[str, ...] = SPLITS
) -> tuple[Any, dict[str, Any]]:
    """The tokenized splits (a ``DatasetDict`` of ``splits`` only: tune never opens test) and
    the manifest (checked against ``task`` when given: ``read_manifest``).

    Raises:
        StageError: the manifest or a split is missing, a split is empty, or the data is of
            another task.
    """
    import datasets

    tokenized_dir = Path(tokenized_dir)
    manifest = read_manifest(tokenized_dir, task)
    data = datasets.DatasetDict()
    for split in splits:
        try:
            data[split] = datasets.load_from_disk(str(tokenized_dir / split))
        except FileNotFoundError as exc:
            raise StageError(f"{tokenized_dir / split}: {exc} (re-run tokenize)") from None
        if len(data[split]) == 0:
            raise StageError(f"{tokenized_dir}: the {split} split is empty")
    return data, manifest
