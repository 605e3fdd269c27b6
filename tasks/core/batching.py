"""Shapes a device likes: padded-length buckets, collators, length-grouped and
token-budget batches, and the learning-rate rule for token budgets."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

from tasks.core.errors import StageError

log = logging.getLogger(__name__)


# Padded lengths come from a small fixed set (the buckets): multiples of 8 up to 64 sub-tokens,
# then multiples of 32, so tokenize.max_length 128 gives 10 shapes (256: 14, 512: 22). A GPU
# then sees a few shapes, each built once (kernels, cuDNN graphs, allocator blocks), where
# padding to the longest in the batch gave a new length almost every step. A CPU has no
# per-shape cost and pays the extra padding in full: on the idle 2-core machine
# (bench/RESULTS.md, throughput 2026-12-05) buckets trained at 0.92x (SST-2) / 0.88x (CoNLL)
# the speed of padding to the longest and inferred at ~0.85x, so a CPU pads to the longest
# (:func:`pads_to_buckets`; throughput 2026-12-06: 1.10x / 1.20x faster than buckets). The
# batches (which examples, in which order) are the same on every device; only the padding
# differs, and padding is masked.
FINE_STEP, FINE_UP_TO, COARSE_STEP = 8, 64, 32


# max_tokens_per_batch: auto. Padded tokens per step on CUDA (tens of thousands keep a GPU
# busy; ~500 SST-2 sentences at 32 tokens); on a CPU null: batch_size examples per step.
AUTO_TOKEN_BUDGET = {"train": 16384, "inference": 65536}


def padded_length(length: int, cap: int | None = None) -> int:
    """The bucket a sequence of ``length`` sub-tokens is padded to (at most ``cap``)."""
    step = FINE_STEP if length <= FINE_UP_TO else COARSE_STEP
    bucket = -(-max(length, 1) // step) * step
    return max(length, min(bucket, cap)) if cap else bucket


def pads_to_buckets(device: str) -> bool:
    """Whether batches on ``device`` are padded to buckets (CUDA and other accelerators) or
    to their longest example (a CPU); see the note on the buckets above."""
    return device != "cpu"


def buckets(max_length: int, cap: int | None = None) -> list[int]:
    """Every padded length a sequence of at most ``max_length`` sub-tokens can get."""
    return sorted({padded_length(n, cap) for n in range(1, max_length + 1)})


def position_cap(tokenizer: Any) -> int | None:
    """The tokenizer's ``model_max_length`` (a bucket never pads beyond it), if it is real."""
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else None


class BucketCollator:
    """transformers' padding collators, padding each batch to its bucket (:func:`padded_length`
    of its longest example), or with ``buckets=False`` to the longest itself; labels padded
    with -100."""

    def __init__(self, task: str, tokenizer: Any, buckets: bool = True):
        self.task, self.tokenizer, self.buckets = task, tokenizer, buckets
        self.cap = position_cap(tokenizer)
        self.collators: dict[int, Any] = {}

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        size = max(len(f["input_ids"]) for f in features)
        if self.buckets:
            size = padded_length(size, self.cap)
        if size not in self.collators:
            self.collators[size] = _padding_collator(self.task, self.tokenizer, size)
        return self.collators[size](features)


def _padding_collator(task: str, tokenizer: Any, size: int) -> Any:
    from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

    pad = {"padding": "max_length", "max_length": size}
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, label_pad_token_id=-100, **pad)
    return DataCollatorWithPadding(tokenizer, **pad)


def make_collator(task: str, tokenizer: Any, device: str) -> Any:
    """Pads each batch for ``device`` (:func:`pads_to_buckets`, :class:`BucketCollator`);
    labels with -100."""
    return BucketCollator(task, tokenizer, buckets=pads_to_buckets(device))


MODEL_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")


def model_columns(dataset: Any) -> list[str]:
    """The columns a model takes; the rest (text, word_ids, length, ...) stay for reports."""
    return [c for c in MODEL_COLUMNS if c in dataset.column_names]


def token_budget(value: int | str | None, device: str, kind: str) -> int | None:
    """``max_tokens_per_batch`` resolved: ``auto`` is :data:`AUTO_TOKEN_BUDGET` on CUDA and
    ``None`` (``batch_size`` examples per batch) elsewhere."""
    if value == "auto":
        return AUTO_TOKEN_BUDGET[kind] if device == "cuda" else None
    return None if value is None else int(value)


def check_budget(max_tokens: int | None, lengths: Sequence[int], cap: int | None, what: str):
    """A budget must hold the longest example, padded.

    Raises:
        StageError: it does not.
    """
    if max_tokens and lengths:
        longest = padded_length(max(lengths), cap)
        if longest > max_tokens:
            raise StageError(
                f"{what}: {max_tokens} is below one padded example of the data ({longest} "
                f"tokens); use at least {longest} or null"
            )


class LengthGroupedSampler:
    """Training order with batches of similar lengths, reproducible per (seed, epoch).

    Kept over transformers' ``train_sampling_strategy="group_by_length"`` (which the
    benchmark's "Trainer best flags" path uses) for exact resume: the order depends only on
    ``seed`` and the epoch (``set_epoch``), not on the global RNG, so a resumed run sees
    exactly the batches the interrupted one would have. Batch order is shuffled, where
    transformers sorts every mega-batch longest first (a long-to-short rhythm). Only the
    very last batch may be short, so batch boundaries stay aligned.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, group: bool = True):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        import torch

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).tolist()
        if not self.group:
            return iter(order)
        mega = self.batch_size * 50
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [
                chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)
            ]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return iter([i for batch in shuffled + short for i in batch])


class TokenBudgetBatches:
    """Training batches of at most ``max_tokens`` padded tokens, reproducible per (seed, epoch).

    transformers has no token-budget sampler. Examples are grouped by bucket
    (:func:`padded_length`); each epoch shuffles every bucket, cuts it into batches of
    ``max_tokens // bucket`` examples, and shuffles the batches. So each bucket gives one
    batch shape (plus one short batch), and the number of batches per epoch is the same
    every epoch (the Trainer's schedule is computed from it once).
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


def sorted_by_length(lengths: Sequence[int]) -> list[int]:
    """Indices from longest to shortest: inference batches with the least padding."""
    return sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))


def inference_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None = None, cap: int | None = None
) -> list[list[int]]:
    """Inference batches, longest first: ``batch_size`` examples each, or (``max_tokens``) as
    many as fit in that many padded tokens (each batch padded to its longest's bucket)."""
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


def mean_batch_examples(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> float:
    """Examples per training batch on average (``batch_size`` without a budget)."""
    if not max_tokens or not lengths:
        return float(min(batch_size, len(lengths)) or batch_size)
    return len(lengths) / len(TokenBudgetBatches(lengths, max_tokens, seed=0))


def scaled_learning_rate(learning_rate: float, batch_size: int, mean_examples: float) -> float:
    """The square-root rule for Adam-type optimizers (Malladi et al. 2022, "On the SDEs and
    Scaling Rules for Adaptive Gradient Algorithms"): ``learning_rate`` is set for
    ``batch_size`` examples per step; batches of ``mean_examples`` use
    ``learning_rate * sqrt(mean_examples / batch_size)``. Warm-up stays a share of steps."""
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
