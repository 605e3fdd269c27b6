"""Identities of what a registered score belongs to: DVC's md5 of the weights and the md5 of
the test split (a champion is compared only on the same test data).

``reports/evaluated.json`` (beside the scores-only ``metrics.json``) binds the scores to the
weights and records the behaviour gate; register refuses weights it does not vouch for.
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
    """DVC's ``.dir`` md5 of the model directory (as ``dvc.lock`` records it), by DVC's own
    ``build`` in a dry run (no cache written; ``.dvcignore`` not applied)."""
    import os

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    staging = HashFileDB(MemoryFileSystem(), "memory://register-model-md5")
    path = os.fspath(Path(model_dir).resolve())
    _, _, obj = build(staging, path, LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)


def record_evaluation(reports_dir: Path, model_dir: Path, gate: str, detail: str = "") -> dict:
    """Write ``evaluated.json``: the weights' md5 and the gate outcome (``GATE_OUTCOMES``)."""
    if gate not in GATE_OUTCOMES:
        raise ValueError(f"gate outcome {gate!r} not in {GATE_OUTCOMES}")
    record = {"model_md5": model_md5(Path(model_dir)), "behaviour_gate": gate, "detail": detail}
    write_json(Path(reports_dir) / EVALUATED_FILE, record)
    return record


def require_evaluation(reports_dir: Path, model_dir: Path) -> str:
    """The md5 of ``model_dir``'s weights; StageError unless ``evaluated.json`` shows the
    scores were measured on them and the behaviour gate passed."""
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
