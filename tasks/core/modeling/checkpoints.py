"""Training checkpoints: the run key naming a run's checkpoint folder, its lock, the newest
complete checkpoint, and the model train saves."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.errors import StageError
from tasks.core.io import sweep_stale
from tasks.core.modeling.precision import Precision
from tasks.core.pretrained.model import ModelSource

log = logging.getLogger("tasks.train")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_key(params: Params, source: ModelSource, precision: Precision, tokenized_dir: Path) -> str:
    """Hash of everything that shapes the training run (not ``train.resume``): a checkpoint
    folder (outside DVC's outs, which DVC deletes before a re-run) is only resumed into the
    same run."""
    digest = hashlib.sha256()
    spec = {
        "task": params.task,
        "train": params.train.model_dump(mode="json", exclude={"resume"}),
        "model": [source.spec, source.registry_version],
        "precision": [precision.device, precision.dtype],
    }
    digest.update(json.dumps(spec, sort_keys=True).encode())
    for path in sorted(Path(tokenized_dir).rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(tokenized_dir)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def last_complete_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (``trainer_state.json`` is written last); half-written
    ones are removed."""
    if not run_dir.is_dir():
        return None
    found = sorted(
        (int(m.group(1)), p) for p in run_dir.iterdir() if (m := CHECKPOINT.match(p.name))
    )
    for _, path in reversed(found):
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            log.warning("removing incomplete checkpoint %s", path)
            shutil.rmtree(path, ignore_errors=True)
    return None


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the ``flock`` of checkpoint folder ``run_dir`` while its run trains: two DVC
    experiments with one run key would otherwise share checkpoints; the second waits. The
    lock file stays (removing it would let a waiter lock a deleted file).
    """
    locks = run_dir.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"checkpoints-{run_dir.name}", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(
                "another run is training this configuration (%s); waiting for it to finish",
                run_dir,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# A killed run's checkpoints wait this long for `train.resume: auto` to continue them.
STALE_CHECKPOINTS_S = 7 * 24 * 3600


def sweep_stale_checkpoints(run_dir: Path) -> list[Path]:
    """Remove other run keys' checkpoint folders untouched for :data:`STALE_CHECKPOINTS_S`,
    under their lock (a locked one is kept)."""
    removed: list[Path] = []
    if not run_dir.parent.is_dir():
        return removed
    locks = run_dir.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    for other in sorted(run_dir.parent.iterdir()):
        if other.name == run_dir.name:
            continue
        with open(locks / f"checkpoints-{other.name}", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # training now
            try:
                removed += sweep_stale([other], STALE_CHECKPOINTS_S)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    return removed


def final_model(trainer: Any) -> Any:
    """The best epoch's model, LoRA adapters merged; StageError when the best checkpoint is
    missing (Trainer would only warn and keep the last epoch)."""
    best = trainer.state.best_model_checkpoint
    if best is None or not Path(best).is_dir():
        raise StageError(
            f"the best checkpoint {best} is missing: the best epoch cannot be restored "
            "(was the checkpoint folder deleted while training?)"
        )
    final = trainer.model
    if hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()  # LoRA weights folded in: a plain model again
    return final
