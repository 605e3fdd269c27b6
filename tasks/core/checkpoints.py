"""Training checkpoints: the run key that names a run's checkpoint folder (so a checkpoint
is only resumed into the same run), the newest complete checkpoint, and restoring the best
epoch's weights (without forcing evaluation and saving onto one schedule, which Trainer's
``load_best_model_at_end`` needs) into the model train saves, LoRA adapters merged."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

from tasks.core.config import Params
from tasks.core.errors import StageError
from tasks.core.model import ModelSource
from tasks.core.precision import Precision

log = logging.getLogger("tasks.train")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def run_key(params: Params, source: ModelSource, precision: Precision, tokenized_dir: Path) -> str:
    """Hash of everything that shapes the training run (not ``train.resume``).

    Checkpoints live in ``.state/checkpoints/<key>``, outside every DVC out: DVC deletes a
    stage's outs before it re-runs the stage, which would throw away the very checkpoints
    a resume needs. Keying the directory by the inputs means a checkpoint is only ever
    resumed into the same run; changed data or params start afresh.
    """
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
    """The newest checkpoint that was completely written; half-written ones (the process
    was killed while saving) are removed. ``trainer_state.json`` is written last."""
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


def restore_best(model: Any, checkpoint: Path) -> None:
    """Load the weights of the best epoch's checkpoint into ``model``."""
    from safetensors.torch import load_file

    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(
            model, load_file(checkpoint / "adapter_model.safetensors")
        )
        unexpected = result.unexpected_keys
    else:
        result = model.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
        unexpected = result.unexpected_keys
        if result.missing_keys:
            raise StageError(f"{checkpoint}: best checkpoint lacks {result.missing_keys[:5]}")
    if unexpected:
        raise StageError(f"{checkpoint}: best checkpoint has unexpected weights {unexpected[:5]}")


def best_model(trainer: Any) -> Any:
    """The trained model with the best epoch's weights, LoRA adapters merged."""
    state = trainer.state
    best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
    if best is not None and best.is_dir():
        restore_best(trainer.model, best)
    final = trainer.model
    if hasattr(final, "merge_and_unload"):
        final = final.merge_and_unload()  # LoRA weights folded in: a plain model again
    return final
