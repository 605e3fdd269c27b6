"""Model inputs from prepared rows: one tokenizer pass, and the columns and statistics of a
text or token dataset."""

from __future__ import annotations

from typing import Any

from tasks.core.data.batching import percentiles
from tasks.core.data.context import centre_word_ids, with_context
from tasks.core.data.labels import align_labels


def _encode_once(
    tokenizer: Any, inputs: list, max_length: int, full: Any = None, **kwargs: Any
) -> tuple[dict[str, list], tuple[list, list], list[int]]:
    """Tokenize ``inputs`` once untruncated (``full``, if the caller has it), re-encoding only
    rows longer than ``max_length``; returns the truncated model columns, word ids before and
    after truncation, and the full lengths."""
    if full is None:
        full = tokenizer(inputs, truncation=False, **kwargs)
    columns = {key: list(values) for key, values in full.items()}
    full_lengths = [len(ids) for ids in columns["input_ids"]]
    full_word_ids = [full.word_ids(i) for i in range(len(inputs))]
    kept_word_ids = list(full_word_ids)
    long_rows = [i for i, n in enumerate(full_lengths) if n > max_length]
    if long_rows:
        cut = tokenizer(
            [inputs[i] for i in long_rows], truncation=True, max_length=max_length, **kwargs
        )
        for j, i in enumerate(long_rows):
            for key in columns:
                columns[key][i] = cut[key][j]
            kept_word_ids[i] = cut.word_ids(j)
    return columns, (full_word_ids, kept_word_ids), full_lengths


def model_inputs(task: str, frame: Any) -> tuple[list, dict[str, Any]]:
    """What the tokenizer is given for a split: texts, or word lists (and its keywords)."""
    if task == "text_classification":
        return [str(t) for t in frame["text"]], {}
    return [[str(w) for w in tokens] for tokens in frame["tokens"]], {"is_split_into_words": True}


def encode_texts(
    tokenizer: Any, frame: Any, label2id: dict[str, int], max_length: int, full: Any = None
) -> tuple[dict[str, list], dict[str, Any]]:
    """Columns of the text dataset and this split's statistics."""
    texts, _ = model_inputs("text_classification", frame)
    columns, _, full_lengths = _encode_once(tokenizer, texts, max_length, full)
    columns["labels"] = [label2id[str(x)] for x in frame["label"]]
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    columns["text"] = texts
    columns["label"] = [str(x) for x in frame["label"]]
    stats = {
        "examples": len(texts),
        "truncated": sum(n > max_length for n in full_lengths),
        "token_length": percentiles(full_lengths),
    }
    return columns, stats


def encode_words(
    tokenizer: Any,
    frame: Any,
    tag2id: dict[str, int],
    max_length: int,
    full: Any = None,
    context_tokens: int = 0,
) -> tuple[dict[str, list], dict[str, Any]]:
    """Columns of the token-classification dataset (``word_ids``: each sub-token's word, -1
    for special tokens and context) and this split's statistics."""
    words, kwargs = model_inputs("token_classification", frame)
    tags = [[str(t) for t in ts] for ts in frame["tags"]]
    inputs, offsets, context = with_context(tokenizer, frame, words, context_tokens, max_length)
    columns, (full_word_ids, kept_word_ids), full_lengths = _encode_once(
        tokenizer, inputs, max_length, full if inputs is words else None, **kwargs
    )
    if inputs is not words:  # back to the sentence's own word numbers; context: None
        full_word_ids, kept_word_ids = (
            [centre_word_ids(ids, offsets[i], len(words[i])) for i, ids in enumerate(rows)]
            for rows in (full_word_ids, kept_word_ids)
        )
    columns["labels"], columns["word_ids"] = [], []
    unaligned = cut = 0
    for sentence_tags, full_ids, word_ids in zip(tags, full_word_ids, kept_word_ids, strict=True):
        columns["labels"].append(align_labels(word_ids, [tag2id[t] for t in sentence_tags]))
        columns["word_ids"].append([-1 if w is None else w for w in word_ids])
        # Words that no sub-token represents (e.g. only control characters) get no label.
        covered = {w for w in full_ids if w is not None}
        unaligned += len(sentence_tags) - len(covered)
        cut += len(covered - {w for w in word_ids if w is not None})
    columns["length"] = [len(ids) for ids in columns["input_ids"]]
    columns["tokens"] = words
    columns["tags"] = tags
    stats = {
        "examples": len(words),
        "truncated": sum(n > max_length for n in full_lengths),
        "words": sum(len(t) for t in tags),
        "words_without_subtokens": unaligned,
        "words_past_max_length": cut,
        "token_length": percentiles(full_lengths),
    }
    if context_tokens:
        stats["context"] = context
    return columns, stats
