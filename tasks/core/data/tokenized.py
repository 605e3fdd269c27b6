"""The tokenize stage's output as later stages read it: one dataset per split and the
``manifest.json`` (a reader apart from how tokenize encodes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.core.config import SPLITS
from tasks.core.errors import StageError

MANIFEST = "manifest.json"


def read_manifest(tokenized_dir: Path, task: str | None = None) -> dict[str, Any]:
    """The manifest of the tokenized data, checked against ``task`` when given; StageError
    when missing or of another task."""
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
    """A ``DatasetDict`` of ``splits`` only (tune never opens test) and the manifest;
    StageError when something is missing or empty, or of another task."""
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
