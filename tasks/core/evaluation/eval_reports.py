"""What evaluate reports beyond the headline scores: scores on slices of the test split
(short/long, negation, entity type), the misclassified examples, the confusion matrix (CSV
and PNG) and the Markdown report (``eval_report.md``)."""

from __future__ import annotations

import re
import statistics
from pathlib import Path
from typing import Any

from tasks.core.io import write_csv, write_figure
from tasks.core.modeling.metrics import entity_scores, text_scores

SPEED_FILE = "inference_speed.json"  # timings: kept out of metrics.json, which register reads
SLICES_FILE = "slices.json"
NEGATION = re.compile(
    r"\b(not|no|never|nothing|nobody|none|neither|nor|without|hardly|cannot)\b|n't", re.I
)


# --- slices -----------------------------------------------------------------------------------


def _length_slices(lengths: list[int]) -> tuple[float, dict[str, list[int]]]:
    cut = statistics.median(lengths)
    return cut, {
        "short": [i for i, n in enumerate(lengths) if n <= cut],
        "long": [i for i, n in enumerate(lengths) if n > cut],
    }


def text_slices(
    texts: list[str], gold: list[int], predicted: list[int], labels: list[str]
) -> dict[str, Any]:
    """Scores on slices of the test split: short/long (words, cut at the median) and with or
    without a negation (``NEGATION``). Each: ``count``, ``accuracy``, ``f1_macro``."""
    cut, groups = _length_slices([len(t.split()) for t in texts])
    negated = [i for i, t in enumerate(texts) if NEGATION.search(t)]
    groups["negation"] = negated
    groups["no_negation"] = sorted(set(range(len(texts))) - set(negated))
    found: dict[str, Any] = {}
    for name, rows in groups.items():
        found[name] = {"count": len(rows)}
        if rows:
            scores = text_scores([gold[i] for i in rows], [predicted[i] for i in rows], labels)
            found[name] |= {"accuracy": scores["accuracy"], "f1_macro": scores["f1_macro"]}
    return {"length_cut_words": cut, "slices": found}


def token_slices(
    gold: list[list[str]], predicted: list[list[str]], per_type: dict[str, Any]
) -> dict[str, Any]:
    """Scores on slices of the test split: short/long sentences (words, cut at the median),
    with entity ``f1_micro`` and ``token_accuracy``, and each entity type's F1 and support."""
    cut, groups = _length_slices([len(s) for s in gold])
    found: dict[str, Any] = {}
    for name, rows in groups.items():
        found[name] = {"count": len(rows)}
        if rows:
            scores = entity_scores([gold[i] for i in rows], [predicted[i] for i in rows])
            found[name] |= {k: scores[k] for k in ("f1_micro", "token_accuracy") if k in scores}
    for kind, scores in per_type.items():
        found[f"type_{kind}"] = {"count": scores["support"], "f1_micro": scores["f1"]}
    return {"length_cut_words": cut, "slices": found}


def slices_markdown(slices: dict[str, Any]) -> str:
    names = sorted({k for v in slices["slices"].values() for k in v} - {"count"})
    lines = [
        "",
        f"## Slices (short: at most {slices['length_cut_words']} words, the test median)",
        "",
        "| slice | count | " + " | ".join(names) + " |",
        "|---|---|" + "---|" * len(names),
    ]
    for name, values in slices["slices"].items():
        cells = [f"{values[k]:.4f}" if k in values else "" for k in names]
        lines.append(f"| {name} | {values['count']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --- mistakes ---------------------------------------------------------------------------------


def _source(row: dict[str, Any]) -> dict[str, Any]:
    return {"source_file": row.get("source_file"), "source_line": row.get("source_line")}


def text_errors(
    test: Any, gold: list[int], predicted: list[int], probabilities: list[Any], labels: list[str]
):
    rows = test.select_columns(
        [c for c in ("text", "source_file", "source_line") if c in test.column_names]
    )
    errors = []
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if g != p:
            row = rows[i]
            errors.append(
                {
                    "text": row["text"],
                    "gold": labels[g],
                    "predicted": labels[p],
                    "confidence": round(float(probabilities[i][p]), 6),
                    "gold_probability": round(float(probabilities[i][g]), 6),
                    **_source(row),
                }
            )
    return errors


def token_errors(
    test: Any, gold: list[list[str]], predicted: list[list[str]], confidences: list[list[Any]]
):
    rows = test.select_columns(
        [c for c in ("tokens", "source_file", "source_line") if c in test.column_names]
    )
    errors = []
    for i, (gs, ps) in enumerate(zip(gold, predicted, strict=True)):
        wrong = [j for j, (g, p) in enumerate(zip(gs, ps, strict=True)) if g != p]
        if not wrong:
            continue
        row = rows[i]
        words = [
            {
                "index": j,
                "word": row["tokens"][j],
                "gold": gs[j],
                "predicted": ps[j],
                "confidence": None if confidences[i][j] is None else round(confidences[i][j], 6),
            }
            for j in wrong
        ]
        errors.append(
            {
                "text": " ".join(row["tokens"]),
                "gold": gs,
                "predicted": ps,
                "confidence": max((w["confidence"] or 0.0) for w in words),
                "wrong_words": words,
                **_source(row),
            }
        )
    return errors


# --- confusion matrix and report --------------------------------------------------------------

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def md_cell(value: Any) -> str:
    """``value`` as plain text inside a Markdown table cell: user labels and texts can hold
    no link, image, HTML tag, emphasis, code span or cell break (``&`` starts no entity)."""
    text = str(value).replace("&", "&amp;").replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def write_confusion(reports_dir: Path, pairs: list[tuple[str, str]], labels: list[str]) -> None:
    """``confusion.csv`` (rows for DVC's confusion template) and ``confusion_matrix.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    write_csv(
        reports_dir / "confusion.csv",
        [{"actual": actual, "predicted": predicted} for actual, predicted in pairs],
        ("actual", "predicted"),
    )
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=int)
    for actual, predicted in pairs:
        matrix[index[actual], index[predicted]] += 1
    size = max(4.0, 0.6 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size * 0.85))
    axes.imshow(matrix, cmap="Blues")
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("actual")
    for (row, column), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=color, fontsize=8)
    axes.set_title("Test confusion matrix")
    figure.tight_layout()
    write_figure(reports_dir / "confusion_matrix.png", figure, dpi=100)
    plt.close(figure)


def markdown(
    task: str,
    metrics: dict[str, Any],
    pairs: list[tuple[str, str]],
    labels: list[str],
    errors: list[dict[str, Any]],
    precision: Any,
    model_dir: Path,
    test_files: list[str],
) -> str:
    """``eval_report.md`` without its slices: the header, the scores, the per-class (or
    per-entity-type) table, the confusion matrix and the ten most confident mistakes."""
    lines = [
        "# Test evaluation",
        "",
        f"Model `{Path(model_dir).name}` ({task}), {metrics['samples']} test examples, "
        f"{precision.dtype} on {precision.device}. Inference speed is in {SPEED_FILE} (kept "
        "out of this file so that two runs of the same inputs write the same report).",
        "",
        *(
            [f"Test examples read from: {', '.join(f'`{f}`' for f in test_files)}.", ""]
            if test_files
            else []
        ),
    ]
    lines += _score_lines(task, metrics)
    lines += _confusion_lines(task, pairs, labels)
    lines += _mistake_lines(task, errors)
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _score_lines(task: str, metrics: dict[str, Any]) -> list[str]:
    """The scores table and the per-class (text) or per-entity-type (tokens) table."""
    lines = [
        "## Scores",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    scalar = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    lines += [f"| {k} | {_fmt(v)} |" for k, v in scalar.items()]
    if task == "token_classification":
        lines += [
            "",
            "Entity scores are seqeval's, strict IOB2, on word-level tags (each word's first "
            "sub-token); `token_accuracy` is the share of words with the right tag.",
        ]
    per = metrics.get("per_class") or metrics.get("per_type") or {}
    lines += [
        "",
        "## Per class" if task == "text_classification" else "## Per entity type",
        "",
        "| label | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {md_cell(k)} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | "
        f"{v['support']} |"
        for k, v in per.items()
    ]
    return lines


def _confusion_lines(task: str, pairs: list[tuple[str, str]], labels: list[str]) -> list[str]:
    """The confusion matrix section: the plot and the counts as a table."""
    counts = {(a, p): 0 for a in labels for p in labels}
    for pair in pairs:
        counts[pair] += 1
    lines = [
        "",
        "## Confusion matrix"
        + (" (words, by entity type)" if task != "text_classification" else ""),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "| actual \\ predicted | " + " | ".join(map(md_cell, labels)) + " |",
        "|---|" + "---|" * len(labels),
    ]
    lines += [
        f"| {md_cell(a)} | " + " | ".join(str(counts[a, p]) for p in labels) + " |" for a in labels
    ]
    return lines


def _mistake_lines(task: str, errors: list[dict[str, Any]]) -> list[str]:
    """The ten most confident mistakes (``errors`` sorted, most confident first)."""
    lines = [
        "",
        f"## Highest-confidence mistakes ({min(len(errors), 10)} of {len(errors)}; "
        "the first evaluate.max_errors are in errors.jsonl)",
        "",
        "| confidence | gold | predicted | text |",
        "|---|---|---|---|",
    ]
    for error in errors[:10]:
        text = md_cell(error["text"][:200])
        if task == "text_classification":
            gold, predicted = error["gold"], error["predicted"]
        else:
            gold = " ".join(f"{w['word']}/{w['gold']}" for w in error["wrong_words"])
            predicted = " ".join(f"{w['word']}/{w['predicted']}" for w in error["wrong_words"])
        lines.append(
            f"| {error['confidence']:.3f} | {md_cell(gold)} | {md_cell(predicted)} | {text} |"
        )
    return lines
