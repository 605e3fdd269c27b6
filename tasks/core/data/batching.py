"""Batches: padding collators, length-grouped and token-budget training batches with their
learning-rate rule, length-sorted inference batches, the model's columns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from tasks.core.errors import StageError

# Padded-length buckets of token budgets: multiples of 8 up to 64 sub-tokens, then of 32.
FINE_STEP, FINE_UP_TO, COARSE_STEP = 8, 64, 32


# evaluate.max_tokens_per_batch: auto on CUDA (on a CPU: None, batch_size examples).
AUTO_TOKEN_BUDGET = {"inference": 65536}


def padded_length(length: int, cap: int | None = None) -> int:
    """The bucket a sequence of ``length`` sub-tokens is padded to (at most ``cap``)."""
    step = FINE_STEP if length <= FINE_UP_TO else COARSE_STEP
    bucket = -(-max(length, 1) // step) * step
    return max(length, min(bucket, cap)) if cap else bucket


def position_cap(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length`` (a bucket never pads beyond it), if it is real."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else None


MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def model_columns(dataset: Any) -> list[str]:
    """The columns a model takes; the rest (text, word_ids, length, ...) stay for reports."""
    return [c for c in MODEL_COLUMNS if c in dataset.column_names]


def padding_collator(task: str, tokenizer: Any, device: str) -> Any:
    """transformers' padding collator for ``task``: to the batch's longest example, rounded up
    to a multiple of 8 on CUDA only (on a CPU it is slower: bench/RESULTS.md, throughput
    2026-12-06)."""
    multiple = 8 if device == "cuda" else None
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=multiple)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


def token_budget(value: int | str | None, device: str, kind: str = "inference") -> int | None:
    """``evaluate.max_tokens_per_batch`` resolved (``auto``: see :data:`AUTO_TOKEN_BUDGET`)."""
    if value == "auto":
        return AUTO_TOKEN_BUDGET[kind] if device == "cuda" else None
    return None if value is None else int(value)


def check_budget(max_tokens: int | None, lengths: Sequence[int], cap: int | None, what: str):
    """Raise StageError when the budget cannot hold the longest example, padded."""
    if max_tokens and lengths:
        longest = padded_length(max(lengths), cap)
        if longest > max_tokens:
            raise StageError(
                f"{what}: {max_tokens} is below one padded example of the data ({longest} "
                f"tokens); use at least {longest} or null"
            )


class TokenBudgetBatches:
    """Training batches of at most ``max_tokens`` padded tokens, reproducible per (seed, epoch)
    (transformers has no token-budget sampler). Per bucket, one batch shape; the number of
    batches is the same every epoch (Trainer computes its schedule once).
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, seed: int, cap: int | None = None):
        self.max_tokens, self.seed, self.epoch = max_tokens, seed, 0
        self.groups: dict[int, list[int]] = {}
        for i, length in enumerate(lengths):
            self.groups.setdefault(padded_length(length, cap), []).append(i)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def per_batch(self, bucket: int) -> int:
        return max(1, self.max_tokens // bucket)

    def __len__(self) -> int:
        return sum(-(-len(ids) // self.per_batch(b)) for b, ids in self.groups.items())

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        batches: list[list[int]] = []
        for bucket in sorted(self.groups):
            ids = self.groups[bucket]
            ids = [ids[i] for i in torch.randperm(len(ids), generator=generator).tolist()]
            size = self.per_batch(bucket)
            batches += [ids[j : j + size] for j in range(0, len(ids), size)]
        return iter([batches[i] for i in torch.randperm(len(batches), generator=generator)])


class LengthGroupedBatches:
    """Training batches of ``batch_size`` examples of similar lengths, shuffled, reproducible
    per (seed, epoch); only the last may be short. Hand-written: Trainer's ``group_by_length``
    orders batches longest first (a toy task did not learn: test_train.py) and draws from the
    global RNG (a resumed run sees other batches).
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega, size = self.batch_size * 50, self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[j : j + size] for j in range(0, len(chunk), size)]
        full = [b for b in batches if len(b) == size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter(shuffled + [b for b in batches if len(b) < size])


def sorted_by_length(lengths: Sequence[int]) -> list[int]:
    """Indices from longest to shortest: inference batches with the least padding."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def inference_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, cap: int | None = None
) -> list[list[int]]:
    """Inference batches, longest first: ``batch_size`` examples, or as many as fit in
    ``max_tokens`` padded tokens."""
    order = sorted_by_length(lengths)
    if not max_tokens:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches: list[list[int]] = []
    for i in order:
        if (
            batches
            and (len(batches[-1]) + 1) * padded_length(lengths[batches[-1][0]], cap) <= max_tokens
        ):
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def scaled_learning_rate(learning_rate: float, batch_size: int, mean_examples: float) -> float:
    """The square-root rule for Adam-type optimizers (Malladi et al. 2022): ``learning_rate``
    for ``batch_size`` examples, scaled to batches of ``mean_examples``."""
    return learning_rate * (mean_examples / batch_size) ** 0.5


def percentiles(values: Sequence[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    arr = np.asarray(values)
    out = {f"p{q}": float(np.percentile(arr, q)) for q in (50, 90, 95, 99)}
    out["max"] = int(arr.max())
    out["mean"] = round(float(arr.mean()), 2)
    return out
