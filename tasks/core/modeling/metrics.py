"""Scores shared by train and evaluate, so both measure exactly the same thing.

Token classification: word-level IOB2 tags with seqeval in strict mode (type and both
boundaries must match); ``token_accuracy`` is not an entity score (``O`` dominates it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def text_scores(
    y_true: Sequence[int],
    y_pred: Sequence[int],
    labels: Sequence[str],
    detailed: bool = False,
) -> dict[str, Any]:
    """Accuracy, macro and weighted F1; with ``detailed`` also per-class precision,
    recall, F1 and support (keyed by label name)."""
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    scores: dict[str, Any] = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_macro": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "f1_weighted": float(
            f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0)
        ),
    }
    if detailed:
        p, r, f, s = precision_recall_fscore_support(
            y_true, y_pred, labels=ids, average=None, zero_division=0
        )
        scores["per_class"] = {
            label: {
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, label in enumerate(labels)
        }
    return scores


def entity_scores(
    gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], detailed: bool = False
) -> dict[str, Any]:
    """seqeval entity precision/recall/F1 (micro and macro, strict IOB2) on word-level tags,
    plus ``token_accuracy`` (share of words tagged right); with ``detailed`` also per type.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    gold = [list(s) for s in gold]
    pred = [list(s) for s in pred]
    for g, p in zip(gold, pred, strict=True):
        if len(g) != len(p):
            raise ValueError(f"gold and predicted sentences differ in length: {len(g)} != {len(p)}")
    words = sum(len(g) for g in gold)
    right = sum(a == b for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    scores: dict[str, Any] = {}
    has_entities = any(t != "O" for s in gold + pred for t in s)
    if has_entities:
        report = classification_report(
            gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
        )
        for average, key in (("micro avg", "micro"), ("macro avg", "macro")):
            for name, field in (
                ("precision", "precision"),
                ("recall", "recall"),
                ("f1", "f1-score"),
            ):
                scores[f"{name}_{key}"] = float(report[average][field])
        per_type = {
            kind: {
                "precision": float(v["precision"]),
                "recall": float(v["recall"]),
                "f1": float(v["f1-score"]),
                "support": int(v["support"]),
            }
            for kind, v in report.items()
            if not kind.endswith(" avg")
        }
    else:  # nothing to find and nothing found
        for name in ("precision", "recall", "f1"):
            scores[f"{name}_micro"] = scores[f"{name}_macro"] = 0.0
        per_type = {}
    scores["token_accuracy"] = right / words if words else 0.0
    if detailed:
        scores["per_type"] = per_type
    return scores


def word_level_tags(
    predicted_ids: Sequence[int],
    label_ids: Sequence[int],
    id2tag: dict[int, str] | Sequence[str],
) -> tuple[list[str], list[str]]:
    """Gold and predicted tags at the positions that carry a label (first sub-tokens)."""
    gold, pred = [], []
    for p, g in zip(predicted_ids, label_ids, strict=True):
        if g == -100:
            continue
        gold.append(id2tag[int(g)])
        pred.append(id2tag[int(p)])
    return gold, pred


def roc_auc(gold: list[int], scores: list[float]) -> float | None:
    """ROC AUC of the positive class's scores; ``None`` when ``gold`` holds one class."""
    from sklearn.metrics import roc_auc_score

    if len(set(gold)) < 2:
        return None  # undefined with one class in the test split
    return float(roc_auc_score(gold, scores))
