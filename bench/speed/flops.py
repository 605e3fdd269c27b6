"""Model FLOPs, rates and MFU of a timed row, and each row's speed relative to the others."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """What the FLOP formulas need: non-embedding parameters, layers, hidden size."""

    params: int
    layers: int
    hidden: int

    def flops(self, tokens: int, squares: int, training: bool) -> tuple[float, float]:
        """(2|6)·N·T, and the same plus attention (4|12)·L·d·Σ len² over real lengths."""
        factor = 3 if training else 1
        dense = 2 * factor * self.params * tokens
        return dense, dense + 4 * factor * self.layers * self.hidden * squares


def model_shape(model: Any) -> Shape:
    """The non-embedding parameter count (the task's head included), layers and width."""
    names = [(n, p.numel()) for n, p in model.named_parameters()]
    dense = sum(count for name, count in names if "embeddings" not in name)
    config = model.config
    return Shape(dense, config.num_hidden_layers, config.hidden_size)


def finish(row: dict, shape: Shape, peaks: dict[str, float], training: bool) -> None:
    """Rates, padding share and MFU (over the peak of the path's own precision)."""
    seconds = row["seconds"]
    dense, with_attention = shape.flops(row["tokens"], row["squares"], training)
    peak = peaks["bf16" if row["precision"] in ("bf16", "fp16") else "fp32"]
    row.update(
        samples_s=row["samples"] / seconds,
        tokens_s=row["tokens"] / seconds,
        padding=1 - row["tokens"] / row["padded"],
        mfu=dense / seconds / peak,
        mfu_attention=with_attention / seconds / peak,
        mfu_bf16=dense / seconds / peaks["bf16"],
    )


def compare(rows: list[dict]) -> None:
    """Each row's real tokens/s over every other path's, as ``row["vs"][path]``."""
    rates = {row["path"]: row["tokens_s"] for row in rows}
    for row in rows:
        row["vs"] = {path: row["tokens_s"] / rate for path, rate in rates.items()}
