"""Labels: IOB2 entity tags, the label map train defines, and word tags on sub-tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from tasks.core.errors import StageError

log = logging.getLogger(__name__)


def entity_type(tag: str) -> str | None:
    """``B-PER`` -> ``PER``; ``O`` -> ``None``."""
    return None if tag == "O" else tag[2:]


def iob2_tags(entity_types: Sequence[str]) -> list[str]:
    """The IOB2 tag list for ``entity_types``: ``O`` then ``B-X``, ``I-X`` per sorted type."""
    tags = ["O"]
    for kind in sorted(set(entity_types)):
        tags += [f"B-{kind}", f"I-{kind}"]
    return tags


def check_iob2(tag: str, where: str) -> None:
    if tag != "O" and not (len(tag) > 2 and tag[:2] in ("B-", "I-")):
        raise StageError(f"{where}: tag {tag!r} is not IOB2 (expected O, B-TYPE or I-TYPE)")


def _where(row: Any, split: str) -> str:
    if row.get("source_file") is not None and row.get("source_line", -1) != -1:
        return f"{split} split ({row['source_file']}:{row['source_line']})"
    return f"{split} split"


def build_labels(task: str, frames: dict[str, Any]) -> list[str]:
    """The label map from train (sorted labels, or ``O`` then ``B-``/``I-`` per type);
    StageError for a label or type absent from train, or a tag that is not IOB2."""
    if task == "text_classification":
        known = sorted({str(x) for x in frames["train"]["label"]})
        for split in ("validation", "test"):
            frame = frames[split]
            unseen = sorted({str(x) for x in frame["label"]} - set(known))
            if unseen:
                row = frame[frame["label"].astype(str) == unseen[0]].iloc[0]
                raise StageError(
                    f"{_where(row, split)}: label {unseen[0]!r} does not occur in train, so the "
                    f"model cannot learn it (train labels: {', '.join(known)}; unseen: "
                    f"{', '.join(map(repr, unseen))})"
                )
        return known
    types: dict[str, set[str]] = {}
    for split, frame in frames.items():  # train, validation, test
        seen: set[str] = set()
        for row in frame.to_dict("records"):
            for tag in row["tags"]:
                check_iob2(str(tag), _where(row, split))
                if (kind := entity_type(str(tag))) is not None:
                    seen.add(kind)
        types[split] = seen
    for split in ("validation", "test"):
        unseen = sorted(types[split] - types["train"])
        if unseen:
            raise StageError(
                f"{split} split: entity type(s) {', '.join(map(repr, unseen))} do not occur in "
                f"train (train types: {', '.join(sorted(types['train'])) or 'none'})"
            )
    return iob2_tags(types["train"])


def align_labels(word_ids: list[int | None], word_labels: list[int]) -> list[int]:
    """Sub-token labels: a word's label on its first sub-token, -100 on the rest and on
    special tokens (``word_ids`` is ``None`` there)."""
    labels, previous = [], None
    for word in word_ids:
        if word is None or word == previous:
            labels.append(-100)
        else:
            labels.append(word_labels[word])
        previous = word
    return labels


def words_from_subtokens(
    word_ids: list[int], token_tags: list[str], confidences: list[float], n_words: int
) -> tuple[list[str], list[float | None]]:
    """Word-level tags from each word's first sub-token; a word without one gets ``O`` and
    confidence ``None``."""
    tags: list[str] = ["O"] * n_words
    confidence: list[float | None] = [None] * n_words
    previous = -1
    for position, word in enumerate(word_ids):
        if word >= 0 and word != previous:
            tags[word] = token_tags[position]
            confidence[word] = confidences[position]
        previous = word
    return tags, confidence
