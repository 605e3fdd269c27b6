"""Identities of what a registered score belongs to: DVC's md5 of the model directory (the
weights) and the md5 of the prepared test split (the data it was scored on). The register
stage tags every version with both, so a re-run finds the version of the same weights and a
champion's score is compared only on the same test data.

``reports/evaluated.json`` (written by the evaluate stage beside the scores-only
``metrics.json``) binds the scores to the weights they were measured on and records the
behaviour gate's outcome; register refuses weights it does not vouch for.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tasks.core.errors import StageError
from tasks.core.io import write_json

EVALUATED_FILE = "evaluated.json"
GATE_OUTCOMES = ("passed", "disabled", "failed")  # disabled: evaluate.behaviour.enabled false


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


def record_evaluation(reports_dir: Path, model_dir: Path, gate: str, detail: str = "") -> dict:
    """Write ``reports_dir/evaluated.json``: the md5 of the weights the scores in
    ``metrics.json`` were measured on and the behaviour gate's outcome (one of
    ``GATE_OUTCOMES``; ``detail``: the gate's message when it failed)."""
    if gate not in GATE_OUTCOMES:
        raise ValueError(f"gate outcome {gate!r} not in {GATE_OUTCOMES}")
    record = {"model_md5": model_md5(Path(model_dir)), "behaviour_gate": gate, "detail": detail}
    write_json(Path(reports_dir) / EVALUATED_FILE, record)
    return record


def require_evaluation(reports_dir: Path, model_dir: Path) -> str:
    """The md5 of ``model_dir``'s weights, once ``evaluated.json`` shows that the scores in
    ``reports_dir`` were measured on exactly these weights and passed the behaviour gate.

    Raises:
        StageError: no record (evaluate did not finish), other weights, or a failed gate.
    """
    path = Path(reports_dir) / EVALUATED_FILE
    if not path.is_file():
        raise StageError(
            f"{path}: not found: evaluate did not finish on these weights; run the evaluate "
            "stage (dvc repro evaluate) before register"
        )
    record = json.loads(path.read_text())
    weights = model_md5(Path(model_dir))
    if record.get("model_md5") != weights:
        raise StageError(
            f"{path}: the scores were measured on other weights (model md5 "
            f"{record.get('model_md5')}) than {model_dir}'s ({weights}); run the evaluate "
            "stage on this model before register"
        )
    if record.get("behaviour_gate") not in ("passed", "disabled"):
        raise StageError(
            f"{path}: the model in {model_dir} failed the behaviour gate "
            f"({record.get('detail') or record.get('behaviour_gate')}); it is not registered"
        )
    return weights
