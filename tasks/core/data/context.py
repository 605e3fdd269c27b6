"""Document context for token classification (``tokenize.context_tokens``).

A sentence is encoded with up to ``context_tokens`` sub-tokens of whole words of its
document's neighbouring sentences on each side, never past ``max_length`` (FLERT, Schweter
and Akbik 2020). Context is treated like special tokens (label -100, word id -1).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def document_order(frame: Any) -> list[list[int]] | None:
    """The rows of each document in reading order; ``None`` without a ``group`` column."""
    if "group" not in frame.columns:
        return None
    keys = frame[["source_file", "group", "source_line"]].copy()
    keys["source_file"] = keys["source_file"].astype("string").fillna("")
    keys["row"] = np.arange(len(frame))
    keys = keys.sort_values(["source_file", "group", "source_line", "row"], kind="stable")
    return [list(rows) for _, rows in keys.groupby(["source_file", "group"], sort=False)["row"]]


def subtoken_counts(tokenizer: Any, words: list[list[str]]) -> list[list[int]]:
    """Sub-tokens per word of each sentence, special tokens excluded (one tokenizer pass)."""
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    counts = []
    for row, sentence in enumerate(words):
        per_word = [0] * len(sentence)
        for word in encoded.word_ids(row):
            if word is not None:
                per_word[word] += 1
        counts.append(per_word)
    return counts


def _take(
    rows: list[int], words: list[list[str]], counts: list[list[int]], budget: int, before: bool
) -> tuple[list[str], int]:
    """Whole words of ``rows`` (nearest first) up to ``budget`` sub-tokens, in reading order,
    with the sub-tokens used."""
    taken: list[str] = []
    used = 0
    for row in rows:
        indices = range(len(words[row]) - 1, -1, -1) if before else range(len(words[row]))
        for i in indices:
            if used + counts[row][i] > budget:
                return (taken[::-1] if before else taken), used
            taken.append(words[row][i])
            used += counts[row][i]
    return (taken[::-1] if before else taken), used


def with_context(
    tokenizer: Any, frame: Any, words: list[list[str]], context_tokens: int, max_length: int
) -> tuple[list[list[str]], list[int], dict[str, Any]]:
    """Each sentence's words with its document context: (word lists to encode, each
    sentence's offset in its list, statistics); unchanged without documents or context."""
    offsets = [0] * len(words)
    documents = document_order(frame) if context_tokens else None
    if not documents:
        reason = "tokenize.context_tokens is 0" if not context_tokens else "no documents"
        return words, offsets, {"documents": 0, "with_context": 0, "reason": reason}
    counts = subtoken_counts(tokenizer, words)
    room_for = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    inputs = list(words)
    used_total, with_any = 0, 0
    for rows in documents:
        for position, row in enumerate(rows):
            room = room_for - sum(counts[row])
            if room <= 0:
                continue
            before, after = rows[position - 1 :: -1] if position else [], rows[position + 1 :]
            # a side with less to give leaves its room to the other
            left_budget = min(context_tokens, room // 2)
            left, left_used = _take(before, words, counts, left_budget, True)
            right_budget = min(context_tokens, room - left_used)
            right, right_used = _take(after, words, counts, right_budget, False)
            if min(context_tokens, room - right_used) > left_budget:
                left_budget = min(context_tokens, room - right_used)
                left, left_used = _take(before, words, counts, left_budget, True)
            inputs[row] = left + list(words[row]) + right
            offsets[row] = len(left)
            used_total += left_used + right_used
            with_any += bool(left or right)
    stats = {
        "documents": len(documents),
        "with_context": with_any,
        "mean_context_subtokens": round(used_total / len(words), 1) if words else 0.0,
    }
    return inputs, offsets, stats


def centre_word_ids(word_ids: list[int | None], offset: int, n_words: int) -> list[int | None]:
    """``word_ids()`` of a sentence encoded with context, renumbered to its own words;
    context sub-tokens become ``None``."""
    return [
        None if w is None or not offset <= w < offset + n_words else w - offset for w in word_ids
    ]
