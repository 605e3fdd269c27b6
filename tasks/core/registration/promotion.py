"""The champion/challenger gate's rules: which ``metrics.json`` key is compared
(``register.metric``), the trivial baseline a first model must beat (``register.min_score:
auto``), and the decision itself with its reason in words. Pure rules: no registry access.
"""

from __future__ import annotations

from pathlib import Path

from tasks.core.config import Params, headline_metric
from tasks.core.modeling.metrics import entity_scores, text_scores


def metric_key(params: Params) -> str:
    """The key of ``register.metric`` in ``metrics.json`` (entity F1 is seqeval's micro F1)."""
    metric = params.register_.metric
    if metric == "auto":
        return headline_metric(params.task)
    return "f1_micro" if metric == "entity_f1" else metric


def trivial_baseline(params: Params, prepared_dir: Path, key: str) -> tuple[float, str]:
    """``key`` of the best constant prediction on the test split (``register.min_score:
    auto``), and what that prediction is: the most frequent test label (among constants it
    maximises accuracy, macro and weighted F1), or no entities (``O`` for every word) for
    token classification."""
    import pandas as pd

    frame = pd.read_parquet(Path(prepared_dir) / "test.parquet")
    if params.task == "text_classification":
        gold = [str(x) for x in frame["label"]]
        labels = sorted(set(gold))
        majority = max(labels, key=gold.count)
        ids = [labels.index(x) for x in gold]
        scores = text_scores(ids, [labels.index(majority)] * len(ids), labels)
        return float(scores[key]), f"always {majority!r}"
    gold_tags = [[str(t) for t in row] for row in frame["tags"]]
    scores = entity_scores(gold_tags, [["O"] * len(row) for row in gold_tags])
    scores["accuracy"] = scores["token_accuracy"]
    return float(scores.get(key, 0.0)), "no entities"


def decide(
    score: float,
    champion_score: float | None,
    min_improvement: float,
    min_score: float | None,
    baseline: tuple[float, str] | None = None,
) -> tuple[bool, str]:
    """The promotion gate: (promote?, reason in words). A first model must reach
    ``min_score``, or with ``min_score`` None (``auto``) beat ``baseline`` (the trivial
    prediction's score on test, and what it predicts)."""
    if champion_score is None and min_score is None:
        floor, what = baseline if baseline is not None else (0.0, "no baseline")
        if score > floor:
            return True, f"first model: {score:.4f} beats the trivial baseline {floor:.4f} ({what})"
        return False, (
            f"first model: {score:.4f} does not beat the trivial baseline {floor:.4f} ({what}); "
            "register.min_score: auto"
        )
    if champion_score is None:
        if score >= min_score:
            return True, f"first model: {score:.4f} reaches min_score {min_score}"
        return False, f"first model: {score:.4f} is below min_score {min_score}"
    delta = score - champion_score
    if delta > 0 and delta >= min_improvement:
        return True, (
            f"beats the champion by {delta:+.4f} ({score:.4f} vs {champion_score:.4f}; "
            f"min_improvement {min_improvement})"
        )
    return False, (
        f"does not beat the champion by min_improvement {min_improvement} "
        f"({score:.4f} vs {champion_score:.4f}, {delta:+.4f})"
    )
