"""Identities of what a registered score belongs to: DVC's md5 of the model directory (the
weights) and the md5 of the prepared test split (the data it was scored on). The register
stage tags every version with both, so a re-run finds the version of the same weights and a
champion's score is compared only on the same test data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def test_data_hash(prepared_dir: Path) -> str:
    """md5 of the prepared test split: the identity of the data a score was measured on."""
    return hashlib.md5((prepared_dir / "test.parquet").read_bytes()).hexdigest()


def model_md5(model_dir: Path) -> str:
    """DVC's md5 of the model directory: the ``.dir`` hash ``dvc.lock`` records for it.

    Computed by DVC's own code (``dvc_data``'s ``build``, as ``dvc add`` and ``dvc repro``
    hash a directory output) in a dry run: nothing is written to any cache. The project's
    ``.dvcignore`` is not applied (it ignores nothing inside ``models/model``).
    """
    import os

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    staging = HashFileDB(MemoryFileSystem(), "memory://register-model-md5")
    path = os.fspath(Path(model_dir).resolve())
    _, _, obj = build(staging, path, LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)
