"""Where sequences are cut: ``tokenize.max_length: auto`` and the check on words a cut leaves
unpredicted in a token task."""

from __future__ import annotations

import logging
from typing import Any

from tasks.core.errors import StageError

log = logging.getLogger(__name__)


# tokenize.max_length auto: this percentile of train's lengths. Token tasks take the longest:
# a word past max_length is never predicted; a cut text is still classified.
AUTO_PERCENTILE = {"text_classification": 99.9, "token_classification": 100.0}
NO_LIMIT = 1_000_000  # a tokenizer without a length limit reports int(1e30)


def encoder_limit(tokenizer: Any, source: Any) -> dict[str, Any] | None:
    """The most sub-tokens the encoder takes (tokenizer's or model's limit, the smaller) with
    its source; ``None`` when neither is known."""
    from transformers import AutoConfig

    limits = {}
    if 0 < int(tokenizer.model_max_length) < NO_LIMIT:
        limits["the tokenizer's model_max_length"] = int(tokenizer.model_max_length)
    try:
        config = AutoConfig.from_pretrained(str(source.model_dir))
    except (OSError, ValueError):
        config = None
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits["the model's max_position_embeddings"] = positions
    if not limits:
        return None
    where = min(limits, key=lambda k: limits[k])
    return {"value": limits[where], "source": where}


def auto_max_length(
    lengths: list[int], limit: dict[str, Any] | None, task: str = "text_classification"
) -> tuple[int, dict]:
    """``tokenize.max_length: auto``: the ``AUTO_PERCENTILE`` of train's lengths rounded up to
    a multiple of 8, at most the encoder's limit; returns it and the record of why."""
    import numpy as np

    q = AUTO_PERCENTILE[task]
    percentile = int(np.percentile(np.asarray(lengths), q, method="higher"))
    value = max(8, -(-percentile // 8) * 8)
    record: dict[str, Any] = {
        "setting": "auto",
        "percentile": q,
        "train_length_at_percentile": percentile,
        "train_max": max(lengths),
        "encoder_limit": limit,
    }
    what = f"the {q:g}th percentile of train's sub-token lengths ({percentile})"
    if limit is not None and value > limit["value"]:
        value = limit["value"]
        record["reason"] = f"{what} is above the encoder's limit, {limit['value']} "
        record["reason"] += f"({limit['source']})"
    else:
        record["reason"] = f"{what}, rounded up to a multiple of 8"
    return value, record


def check_unpredicted(
    stats: dict[str, Any], max_length: int, limit: dict[str, Any] | None, max_share: float
) -> None:
    """Token task: warn about words past ``max_length`` (training's validation scores never
    see them); StageError when the validation share exceeds ``max_share``."""
    problems = []
    for split in stats:  # train, validation, test
        cut, words = stats[split]["words_past_max_length"], stats[split]["words"]
        if not cut:
            continue
        share = cut / words if words else 0.0
        longest = int(stats[split]["token_length"].get("max", max_length))
        covering = -(-longest // 8) * 8
        if limit is not None:
            covering = min(covering, limit["value"])
        log.warning(
            "%s: %d of %d words (%.2f%%) lie past tokenize.max_length=%d and are never "
            "predicted%s; tokenize.max_length: %d would keep %s",
            split, cut, words, 100 * share, max_length,
            {"train": "", "validation": " by training's validation scores"}.get(
                split, " in the examples (evaluate predicts them in overlapping windows)"
            ), covering,
            "all of them" if covering >= longest else "as many as the encoder can",
        )  # fmt: skip
        if split == "validation" and share > max_share:
            problems.append(f"{split} split: {cut} of {words} words ({share:.1%})")
    if problems:
        raise StageError(
            f"{'; '.join(problems)} lie past tokenize.max_length={max_length} and would never "
            f"be scored while training, more than tokenize.max_unpredicted_share="
            f"{max_share}. Raise tokenize.max_length (auto chooses from train's lengths, up to "
            "the encoder's limit), or accept the loss by raising tokenize.max_unpredicted_share"
        )
