"""IOB2 entity tags: the entity type of a tag, the tag set of entity types, checks."""

from __future__ import annotations

import logging
from collections.abc import Sequence

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


# --- models -------------------------------------------------------------------------------------


def words_from_subtokens(
    word_ids: list[int], token_tags: list[str], confidences: list[float], n_words: int
) -> tuple[list[str], list[float | None]]:
    """Word-level tags: each word takes the tag predicted on its first sub-token. Words
    without a sub-token (truncated away, or nothing the tokenizer could represent) get
    ``O`` (they count as missed entities) and confidence ``None``."""
    tags: list[str] = ["O"] * n_words
    confidence: list[float | None] = [None] * n_words
    previous = -1
    for position, word in enumerate(word_ids):
        if word >= 0 and word != previous:
            tags[word] = token_tags[position]
            confidence[word] = confidences[position]
        previous = word
    return tags, confidence
