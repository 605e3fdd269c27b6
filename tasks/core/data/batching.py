"""Batches: the padding collators, length-grouped and token-budget training batches (opt-in,
``train.max_tokens_per_batch``) and their learning-rate rule, length-sorted inference batches
(the evaluate stage), the model's columns."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from transformers import DataCollatorForTokenClassification, DataCollatorWithPadding

from tasks.core.errors import StageError

# Token budgets group examples by padded length (the bucket): multiples of 8 up to 64
# sub-tokens, then multiples of 32, so tokenize.max_length 128 gives 10 groups (512: 22); a
# batch of a group is padded to at most its bucket, so it stays within the budget.
FINE_STEP, FINE_UP_TO, COARSE_STEP = 8, 64, 32


# evaluate.max_tokens_per_batch: auto. Padded tokens per inference batch on CUDA (tens of
# thousands keep a GPU busy); on a CPU null: evaluate.batch_size examples per batch.
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
    """transformers' padding collator for ``task`` (labels padded with -100): to the longest
    example of the batch, rounded up to a multiple of 8 on CUDA (tensor-core shapes). A CPU
    pads to the longest itself: rounding up cost it measurably (bench/RESULTS.md, throughput
    2026-12-06: padding to buckets trained at 0.92x / 0.88x)."""
    multiple = 8 if device == "cuda" else None
    if task == "token_classification":
        return DataCollatorForTokenClassification(tokenizer, pad_to_multiple_of=multiple)
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


def token_budget(value: int | str | None, device: str, kind: str = "inference") -> int | None:
    """``evaluate.max_tokens_per_batch`` resolved: ``auto`` is :data:`AUTO_TOKEN_BUDGET` on
    CUDA and ``None`` (``batch_size`` examples per batch) elsewhere."""
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


class LengthGroupedBatches:
    """Training batches of ``batch_size`` examples of similar lengths, in shuffled order,
    reproducible per (seed, epoch).

    Kept over Trainer's ``group_by_length`` sampler, which sorts each mega-batch of 50 batches
    longest first and orders its batches that way: a toy text task (test_train.py,
    ``test_text_task_learns_and_writes_outputs``: 240 examples, one mega-batch) stayed at
    validation accuracy 0.50 after 4 epochs with it and reached 1.00 with random order or
    these batches. Its order also comes from the global RNG at each epoch's start, so a run
    resumed in a later epoch sees other batches; here it depends on (seed, epoch) alone.
    Only the last batch may be short.
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
