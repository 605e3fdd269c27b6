"""The train stage's console output: :class:`TrainerProgress` in place of ``Trainer``'s own
printing (a tqdm bar plus a raw ``{'loss': ...}`` dict every ``logging_steps``)."""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from tasks.core.progress import Progress


class TrainerProgress(TrainerCallback):
    """Step/total, loss, learning rate, real (non-padding) tokens/s and ETA of a
    ``Trainer``; the evaluation metrics of each epoch in one line."""

    def __init__(self, task: str = "train", every: float = 5.0, seen: Any = None) -> None:
        # seen(): real tokens so far; default: Trainer's include_num_input_tokens_seen count
        self.task, self.every, self.seen = task, every, seen
        self.progress: Progress | None = None
        self.tokens, self.clock = 0, time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return  # one progress line per run, not one per training process
        self.progress = Progress(state.max_steps, self.task, every=self.every)
        self.tokens, self.clock = self._seen(state), time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.update(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        fields: dict[str, Any] = {}
        if "loss" in logs:
            fields["loss"] = float(logs["loss"])
        if "learning_rate" in logs:
            fields["lr"] = float(logs["learning_rate"])
        seen = self._seen(state)
        now = time.perf_counter()
        if seen > self.tokens and now > self.clock:
            fields["tokens/s"] = (seen - self.tokens) / (now - self.clock)
            self.tokens, self.clock = seen, now
        self.progress.fields.update(fields)
        evaluation = {k: v for k, v in logs.items() if k.startswith("eval_")}
        if evaluation:
            shown = " ".join(
                f"{k.removeprefix('eval_')} {v:.4f}"
                for k, v in evaluation.items()
                if isinstance(v, float) and "runtime" not in k and "per_second" not in k
            )
            logging.getLogger(f"tasks.{self.task}").info(
                "epoch %.0f validation: %s", state.epoch or 0, shown
            )

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress is not None:
            self.progress.close()

    def _seen(self, state: Any) -> int:
        return self.seen() if self.seen is not None else state.num_input_tokens_seen or 0


def install(trainer: Any, task: str = "train", every: float = 5.0) -> Any:
    """Replace ``trainer``'s own console output with :class:`TrainerProgress`."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    counted = getattr(trainer.data_collator, "tokens", None)  # training.CountingCollator
    seen = (lambda: trainer.data_collator.tokens) if counted is not None else None
    callback = TrainerProgress(task, every, seen)
    trainer.add_callback(callback)
    return callback
