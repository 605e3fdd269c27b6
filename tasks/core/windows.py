"""Token classification at any length: a sentence longer than the model's window is encoded
in overlapping windows (the tokenizer's ``return_overflowing_tokens`` with a ``stride``, as
the transformers token-classification pipeline does for aggregated output) and every word
takes the prediction of the window where its first sub-token lies farthest from an edge.

Gap closed: the pipeline's own ``stride`` refuses ``aggregation_strategy="none"``, the
word-exact grouping evaluate and predict use (first sub-token per word, see
:mod:`tasks.core.labels`), so the windows are merged here.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def encode_windows(tokenizer: Any, inputs: Any, max_length: int, **kwargs: Any) -> Any:
    """``inputs`` (one text, or one list of words with ``is_split_into_words=True``) as
    windows of at most ``max_length`` sub-tokens overlapping by half a window, padded into
    one batch of tensors."""
    stride = max(max_length // 2 - 2, 0)  # special tokens are outside the overlap
    return tokenizer(
        inputs,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        padding=True,
        return_tensors="pt",
        **kwargs,
    )


def window_probabilities(model: Any, encoding: Any) -> np.ndarray:
    """Class probabilities per window and sub-token: (windows, positions, classes)."""
    import torch

    names = ("input_ids", "attention_mask", "token_type_ids")
    device = next(model.parameters()).device
    batch = {k: encoding[k].to(device) for k in names if k in encoding}
    with torch.inference_mode():
        logits = model(**batch).logits.float()
    return torch.softmax(logits, dim=-1).cpu().numpy()


def best_word_positions(encoding: Any, subtokens: dict[int, int]) -> dict[int, tuple[int, int]]:
    """For every word, the (window, position) of its first sub-token that lies farthest from
    its window's edges. ``subtokens``: each word's sub-token count in the whole encoding, which
    tells a window that cut a word's start (it holds fewer of them, from its first position)."""
    chosen: dict[int, tuple[int, int, int]] = {}
    for window in range(len(encoding["input_ids"])):
        word_ids = encoding.word_ids(window)
        inside = [p for p, w in enumerate(word_ids) if w is not None]
        if not inside:
            continue
        first, last = inside[0], inside[-1]
        cut = (
            word_ids[first]
            if word_ids.count(word_ids[first]) < subtokens[word_ids[first]]
            else None
        )
        for position in inside:
            word = word_ids[position]
            if word_ids[position - 1] == word or (position == first and word == cut):
                continue  # not its first sub-token, or its start lies in the window before
            margin = min(position - first, last - position)
            if word not in chosen or margin > chosen[word][2]:
                chosen[word] = (window, position, margin)
    return {word: (window, position) for word, (window, position, _) in chosen.items()}


def subtoken_counts(tokenizer: Any, inputs: Any, **kwargs: Any) -> dict[int, int]:
    """Sub-tokens per word of ``inputs`` encoded whole (no truncation)."""
    counts: dict[int, int] = {}
    for word in tokenizer(inputs, truncation=False, **kwargs).word_ids():
        if word is not None:
            counts[word] = counts.get(word, 0) + 1
    return counts


def windowed_words(
    model: Any, tokenizer: Any, words: list[str], max_length: int, id2label: dict[int, str]
) -> tuple[list[str], list[float | None]]:
    """Tag and confidence of every word of one sentence (a list of words), however long:
    ``O`` and None only for a word with no sub-token at all."""
    encoding = encode_windows(tokenizer, words, max_length, is_split_into_words=True)
    probabilities = window_probabilities(model, encoding)
    counts = subtoken_counts(tokenizer, words, is_split_into_words=True)
    tags: list[str] = ["O"] * len(words)
    confidence: list[float | None] = [None] * len(words)
    for word, (window, position) in best_word_positions(encoding, counts).items():
        scores = probabilities[window, position]
        tags[word] = id2label[int(scores.argmax())]
        confidence[word] = float(scores.max())
    return tags, confidence
