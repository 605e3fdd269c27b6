"""The way out of a failed validation check: the ``validate`` params key that relaxes it with
its current value, or why no key does (then the data must change)."""

from __future__ import annotations

import pandas as pd

from tasks.core.config import Params, ValidateParams


def remedy(check: str, params: Params, frame: pd.DataFrame | None) -> str:
    """How to get past a failed check: the ``validate`` key that relaxes it with its current
    value, or why no key does (then the data must change)."""
    cfg, token = params.validate_, params.task == "token_classification"
    labels = "null" if cfg.labels is None else cfg.labels
    if check == "text_length":
        return _length_remedy(cfg, token, frame)
    keyed = {
        "duplicate_share": f"relax with validate.max_duplicate_share = "
        f"{cfg.max_duplicate_share} (the share of a split's rows that may repeat an earlier "
        "text; prepare.deduplicate drops exact repeats, same text and label, before splitting)",
        "leakage": f"relax with validate.max_leakage_share = {cfg.max_leakage_share} (the "
        "share of validation/test rows that may repeat a train text)",
        "class_share": f"relax with validate.min_class_share = {cfg.min_class_share} (the "
        "smallest share of train a class may have)",
        "label_allowed": f"relax with validate.labels = {labels} (add the label there, or "
        "null to accept the labels seen in train)",
        "label_case": f"relax with validate.labels = {labels}: list every spelling there to "
        "keep them as separate classes; otherwise correct the labels in the data",
    }
    keyed["entity_type_allowed"] = keyed["label_allowed"]
    unseen = "no key relaxes it: a model cannot learn a class absent from train; add train "
    unseen += "examples of it or remove these rows"
    fixed = {
        "class_count": "no key relaxes it: a classifier needs at least two classes in train "
        "(check data.label_column and the source)",
        "label_in_train": unseen,
        "entity_type_in_train": unseen,
        "iob_sequence": "no key relaxes it; a file tagged in IOB1 (a chunk may start with "
        "I-) is converted to IOB2 by data.conll.scheme: iob1",
        "column_exists": "no key relaxes it: run the 'prepare' stage again",
        "column_type": "no key relaxes it: run the 'prepare' stage again",
    }
    default = "no key relaxes it: correct the data (the offending rows name file and line)"
    return keyed.get(check) or fixed.get(check) or default


def _length_remedy(cfg: ValidateParams, token: bool, frame: pd.DataFrame | None) -> str:
    """The ``text_length`` remedy: how many rows are too long or too short and which key
    moves each bound (the bounds alone without a frame)."""
    unit = "tokens" if token else "characters"
    rows = "sentence(s)" if token else "row(s)"
    bounds = (
        f"relax with validate.min_text_length = {cfg.min_text_length} or "
        f"validate.max_text_length = {cfg.max_text_length} ({unit})"
    )
    if frame is None or ("n_tokens" if token else "text") not in frame:
        return bounds
    lengths = (
        frame["n_tokens"]
        if token
        else frame["text"].map(lambda v: len(v) if isinstance(v, str) else None)
    )
    lengths = pd.to_numeric(lengths, errors="coerce")
    limit = cfg.max_text_length
    too_long = 0 if limit is None else int((lengths > limit).sum())
    too_short = int((lengths < cfg.min_text_length).sum())
    parts = []
    if too_long:
        parts.append(
            f"{too_long} {rows} longer than validate.max_text_length = {cfg.max_text_length} "
            f"({unit}): raising it is safe, tokenize truncates every example at "
            "tokenize.max_length sub-tokens (and counts them in reports/tokenize.json)"
        )
    if too_short:
        parts.append(
            f"{too_short} {rows} shorter than validate.min_text_length = {cfg.min_text_length} "
            f"({unit}): lower it to accept them"
        )
    return "; ".join(parts) or bounds
