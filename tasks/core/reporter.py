"""The progress reporter (:class:`Progress`): a bar on a terminal, else a log line every few
percent. Apart from ``tasks.core.progress`` so as not to import transformers' Trainer.
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
