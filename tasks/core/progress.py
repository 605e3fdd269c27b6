"""Progress of long work: a bar on a terminal, one concise log line every few percent
otherwise (DVC, Prefect and CI logs), e.g.

    train: step 120/600 (20%) loss 0.4123 lr 4.1e-05 3,412 tokens/s ETA 2m10s

:class:`Progress` is the reporter, :class:`TrialProgress` replaces Optuna's lines. Nothing
here imports transformers (the Trainer's callback: tasks/core/modeling/trainer_progress.py),
so stages that never train start without it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

# FINETUNE_PROGRESS=bar|lines forces one style (default: bar on a terminal, else lines).
STYLE_VARIABLE = "FINETUNE_PROGRESS"


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _value(name: str, value: Any) -> str:
    if isinstance(value, float):
        if name in ("lr", "learning_rate"):
            return f"{name} {value:.1e}"
        if name.endswith("tokens/s") or name.endswith("/s"):
            return f"{value:,.0f} {name}"
        return f"{name} {value:.4f}"
    return f"{name} {value}"


class Progress:
    """Progress of ``total`` steps of ``task`` (``update`` with numbers such as ``loss=0.41``);
    off a terminal, logged every ``every`` percent and at the end."""

    def __init__(
        self, total: int, task: str, unit: str = "step", every: float = 10.0, stream: Any = None
    ):
        self.total, self.task, self.unit, self.every = max(int(total), 0), task, unit, every
        self.done, self.fields = 0, {}
        self.started = time.perf_counter()
        self.next_percent = every
        self.log = logging.getLogger(f"tasks.{task}")
        stream = stream or sys.stderr
        style = os.environ.get(STYLE_VARIABLE) or ("bar" if _isatty(stream) else "lines")
        self.bar = None
        if style == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=task, unit=unit, file=stream, leave=True)

    def update(self, done: int | None = None, advance: int = 1, **fields: Any) -> None:
        """Set the count to ``done`` (or add ``advance``) and the numbers shown beside it."""
        before = self.done
        self.done = min(self.total, done if done is not None else self.done + advance)
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        if self.bar is not None:
            self.bar.update(self.done - before)
            if self.fields:
                self.bar.set_postfix_str(self._numbers(), refresh=False)
            return
        percent = 100.0 * self.done / self.total if self.total else 100.0
        if percent + 1e-9 >= self.next_percent or self.done == self.total:
            while self.next_percent <= percent + 1e-9:
                self.next_percent += self.every
            self.log.info(self.line())

    def line(self) -> str:
        """``unit done/total (percent) numbers [rate] ETA``."""
        elapsed = time.perf_counter() - self.started
        percent = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.unit} {self.done}/{self.total} ({percent:.0f}%)"]
        if self.fields:
            parts.append(self._numbers())
        if 0 < self.done < self.total:
            parts.append(f"ETA {_duration(elapsed / self.done * (self.total - self.done))}")
        elif self.done >= self.total:
            parts.append(f"in {_duration(elapsed)}")
        return " ".join(parts)

    def _numbers(self) -> str:
        return " ".join(_value(name, value) for name, value in self.fields.items())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.done < self.total:  # ended early (e.g. early stopping): say where
            self.log.info(self.line())


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class TrialProgress:
    """An Optuna ``study.optimize`` callback: ``trial i/n: value (best so far, #k), p
    pruned`` after each trial; call :func:`quiet_optuna` to drop Optuna's own lines."""

    def __init__(self, n_trials: int, task: str = "tune"):
        self.n_trials, self.log = n_trials, logging.getLogger(f"tasks.{task}")
        self.started = time.perf_counter()

    def __call__(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state.is_finished()]
        pruned = sum(t.state == TrialState.PRUNED for t in done)
        outcome = trial.state.name.lower()
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            outcome = f"{trial.value:.4f}"
        best = ""
        completed = [t for t in done if t.state == TrialState.COMPLETE]
        if completed:
            best = f", best {study.best_value:.4f} (#{study.best_trial.number})"
        elapsed = time.perf_counter() - self.started
        eta = ""
        if 0 < len(done) < self.n_trials:
            eta = f", ETA {_duration(elapsed / len(done) * (self.n_trials - len(done)))}"
        self.log.info(
            "trial %s: %s%s, %d pruned%s",
            f"{len(done)}/{self.n_trials}" if self.n_trials else len(done),
            outcome,
            best,
            pruned,
            eta,
        )


def quiet_optuna() -> None:
    """Optuna's ``[I ...] Trial 3 finished with value...`` lines off (warnings stay)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
