"""Stage ``evaluate``: score the trained model on the test split, once.

Reads ``task``, ``train.precision`` (inference runs in the training precision) and
``evaluate`` from ``params.yaml``, ``data/tokenized/`` (test split only) and
``models/model/``. Writes into ``reports/``:

- ``metrics.json``: DVC metrics. Text: accuracy, macro/weighted F1, per-class precision,
  recall, F1 and support, ROC AUC for two classes. Tokens: seqeval entity precision,
  recall and F1 (micro, macro, per type; strict IOB2, on word-level tags) and
  ``token_accuracy`` (share of words tagged right, not an entity score). Scores only: the
  register stage depends on this file, so it holds nothing that changes between two runs
  of the same model on the same data.
- ``inference_speed.json``: DVC metrics that nothing depends on: inference seconds,
  samples/s, real tokens/s, batch size, precision and device.
- ``confusion.csv`` (one ``actual,predicted`` row per example, or per word for tokens; a
  DVC confusion plot) and ``confusion_matrix.png``.
- ``errors.jsonl``: the misclassified examples, highest-confidence mistakes first.
- ``slices.json``: DVC metrics on slices of the test split: short and long texts (in words,
  cut at the test split's median), texts with and without a negation (text task), and each
  entity type (token task).
- ``eval_report.md``: the tables and the plot.
- ``behaviour.json``: behavioural checks of the model (``tasks/core/behaviour.py``), with their
  section of ``eval_report.md``; run by the stage after the scores (``evaluate.behaviour``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import statistics
import time
from pathlib import Path
from typing import Any

import typer

from tasks.core.batching import (
    check_budget,
    inference_batches,
    make_collator,
    model_columns,
    position_cap,
    token_budget,
)
from tasks.core.cli import stage_command
from tasks.core.config import DEFAULT_PARAMS, Params, headline_metric, load_params
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.errors import StageError
from tasks.core.io import write_atomic, write_json
from tasks.core.labels import entity_type, words_from_subtokens
from tasks.core.metrics import entity_scores, text_scores
from tasks.core.model import (
    load_model,
    quiet_transformers,
    vocab_hash,
)
from tasks.core.precision import choose_precision
from tasks.core.progress import Progress
from tasks.tokenize import TOKENIZED_DIR, load_tokenized

log = logging.getLogger(__name__)
MODEL_DIR = PROJECT_ROOT / "models" / "model"
REPORTS_DIR = PROJECT_ROOT / "reports"
SPEED_FILE = "inference_speed.json"  # timings: kept out of metrics.json, which register reads
SLICES_FILE = "slices.json"
NEGATION = re.compile(
    r"\b(not|no|never|nothing|nobody|none|neither|nor|without|hardly|cannot)\b|n't", re.I
)

app = typer.Typer(add_completion=False, help=__doc__)


# --- inference --------------------------------------------------------------------------------


def predict(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    task: str,
    batch_size: int,
    precision: Any,
    max_tokens: int | None = None,
) -> tuple[list[Any], dict[str, float]]:
    """Class probabilities per example (text) or per sub-token (tokens), in dataset order.

    Batches are cut from the examples sorted by length (little padding): ``batch_size``
    examples, or as many as fit in ``max_tokens`` padded tokens; each is padded to its
    bucket (few shapes) and run under ``inference_mode`` with the training precision's
    autocast.

    Returns:
        The probabilities (numpy arrays) and timing: ``seconds``, ``samples_per_second``,
        ``tokens_per_second`` (real, non-padding tokens).
    """
    import torch

    device = torch.device(precision.device)
    model.to(device)
    inputs = dataset.select_columns([c for c in model_columns(dataset) if c != "labels"])
    collate = make_collator("text_classification", tokenizer)  # pads inputs only
    lengths = list(dataset["length"])
    batches = inference_batches(lengths, batch_size, max_tokens, position_cap(tokenizer))
    probabilities: list[Any] = [None] * len(lengths)
    tokens = 0
    started = time.perf_counter()
    # One read of the columns: indexing the dataset row by row costs ~10x more per row.
    columns = inputs.to_dict()
    progress = Progress(len(batches), "evaluate", unit="batch")
    predicted = 0
    with torch.inference_mode(), precision.autocast():
        for indices in batches:
            batch = collate([{c: values[i] for c, values in columns.items()} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(**batch).logits.float()
            probs = torch.softmax(logits, dim=-1).cpu().numpy()
            tokens += int(batch["attention_mask"].sum())
            for row, i in enumerate(indices):
                if task == "text_classification":
                    probabilities[i] = probs[row]
                else:  # keep the unpadded positions only
                    probabilities[i] = probs[row, : lengths[i]]
            predicted += len(indices)
            progress.update(examples=predicted)
    progress.close()
    seconds = time.perf_counter() - started
    timing = {
        "inference_seconds": round(seconds, 4),
        "samples_per_second": round(len(lengths) / seconds, 2) if seconds > 0 else None,
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
    }
    return probabilities, timing


# --- the stage --------------------------------------------------------------------------------


def _label_ids(model: Any, needed: set[str], what: str) -> dict[str, int]:
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    unknown = sorted(needed - set(label2id))
    if unknown:
        raise StageError(
            f"test split: {what} {', '.join(map(repr, unknown))} not in the model's label map "
            f"({', '.join(label2id)}); re-run train on data with these labels"
        )
    return label2id


def evaluate(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> dict[str, Any]:
    """Score ``model_dir`` on the test split and write the reports.

    Args:
        params: validated parameters (``task``, ``train.precision``, ``evaluate``).
        tokenized_dir: output of the tokenize stage (only ``test`` is read).
        model_dir: output of the train stage.
        reports_dir: receives metrics.json, inference_speed.json, slices.json,
            confusion.csv, confusion_matrix.png, errors.jsonl and eval_report.md (the
            behavioural checks are the stage's next step: ``run_stage``).

    Returns:
        The content of ``metrics.json`` (scores only).
    """
    import numpy as np

    quiet_transformers()
    task = params.task
    data, manifest = load_tokenized(tokenized_dir, task, ("test",))
    test = data["test"]
    model, tokenizer = load_model(model_dir, task)
    if vocab_hash(tokenizer) != manifest["tokenizer"]["vocab_sha256"]:
        raise StageError(
            f"{tokenized_dir} was tokenized with another tokenizer than the model in "
            f"{model_dir}; re-run tokenize and train"
        )
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    labels = [id2label[i] for i in range(len(id2label))]
    precision = choose_precision(params.train.precision)
    max_tokens = token_budget(params.evaluate.max_tokens_per_batch, precision.device, "inference")
    check_budget(
        max_tokens, list(test["length"]), position_cap(tokenizer), "evaluate.max_tokens_per_batch"
    )
    probabilities, timing = predict(
        model, tokenizer, test, task, params.evaluate.batch_size, precision, max_tokens
    )

    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    if task == "text_classification":
        label2id = _label_ids(model, set(test["label"]), "label(s)")
        gold = [label2id[g] for g in test["label"]]
        predicted = [int(np.argmax(p)) for p in probabilities]
        metrics: dict[str, Any] = {
            "samples": len(test),
            **text_scores(gold, predicted, labels, True),
        }
        if len(labels) == 2:
            metrics["roc_auc"] = _roc_auc(gold, [float(p[1]) for p in probabilities])
        pairs = [(labels[g], labels[p]) for g, p in zip(gold, predicted, strict=True)]
        slices = text_slices(list(test["text"]), gold, predicted, labels)
        errors = _text_errors(test, gold, predicted, probabilities, labels)
        matrix_labels = labels
    else:
        gold_tags = [list(t) for t in test["tags"]]
        _label_ids(model, {t for s in gold_tags for t in s}, "tag(s)")
        predicted_tags, confidences = [], []
        word_ids = list(test["word_ids"])
        for i, probs in enumerate(probabilities):
            token_tags = [id2label[int(k)] for k in probs.argmax(axis=-1)]
            tags, confidence = words_from_subtokens(
                word_ids[i], token_tags, probs.max(axis=-1).tolist(), len(gold_tags[i])
            )
            predicted_tags.append(tags)
            confidences.append(confidence)
        missing = sum(c is None for sentence in confidences for c in sentence)
        metrics = {
            "samples": len(test),
            "words": sum(len(s) for s in gold_tags),
            "words_not_predicted": missing,  # truncated or without sub-tokens: scored as O
            "truncated_sentences": int(manifest["truncated"]["test"]),
            **entity_scores(gold_tags, predicted_tags, detailed=True),
        }
        pairs = [
            (entity_type(g) or "O", entity_type(p) or "O")
            for gs, ps in zip(gold_tags, predicted_tags, strict=True)
            for g, p in zip(gs, ps, strict=True)
        ]
        errors = _token_errors(test, gold_tags, predicted_tags, confidences)
        slices = token_slices(gold_tags, predicted_tags, metrics["per_type"])
        matrix_labels = ["O", *sorted({entity_type(t) for t in labels} - {None})]
    speed = {
        **timing,
        "batch_size": params.evaluate.batch_size,
        "max_tokens_per_batch": max_tokens,
        "dtype": str(precision.dtype).removeprefix("torch."),
        "device": str(precision.device),
    }
    # Named in the report: with a {train, test} source the test split is e.g. SST-2's dev file.
    test_files = sorted(set(test["source_file"])) if "source_file" in test.column_names else []

    _write_confusion(reports_dir, pairs, matrix_labels)
    errors.sort(key=lambda e: -e["confidence"])
    listed = errors[: params.evaluate.max_errors]
    write_atomic(
        reports_dir / "errors.jsonl",
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in listed),
    )
    write_json(reports_dir / "metrics.json", metrics)
    write_json(reports_dir / SPEED_FILE, speed)
    write_json(reports_dir / SLICES_FILE, slices)
    write_atomic(
        reports_dir / "eval_report.md",
        _markdown(task, metrics, pairs, matrix_labels, errors, precision, model_dir, test_files)
        + _slices_markdown(slices),
    )
    headline = headline_metric(task)
    log.info(
        "test: %d examples, %s %.4f, %s samples/s (%s on %s); %d errors listed",
        len(test), headline, metrics[headline], timing["samples_per_second"], precision.dtype,
        precision.device, min(len(errors), params.evaluate.max_errors),
    )  # fmt: skip
    return metrics


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


def _slices_markdown(slices: dict[str, Any]) -> str:
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


def _roc_auc(gold: list[int], scores: list[float]) -> float | None:
    from sklearn.metrics import roc_auc_score

    if len(set(gold)) < 2:
        return None  # undefined with one class in the test split
    return float(roc_auc_score(gold, scores))


def _source(row: dict[str, Any]) -> dict[str, Any]:
    return {"source_file": row.get("source_file"), "source_line": row.get("source_line")}


def _text_errors(
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


def _token_errors(
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


def _write_confusion(reports_dir: Path, pairs: list[tuple[str, str]], labels: list[str]) -> None:
    """``confusion.csv`` (rows for DVC's confusion template) and ``confusion_matrix.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = io.StringIO(newline="")
    writer = csv.writer(rows)
    writer.writerow(["actual", "predicted"])
    writer.writerows(pairs)
    write_atomic(reports_dir / "confusion.csv", rows.getvalue())
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
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=100)
    write_atomic(reports_dir / "confusion_matrix.png", image.getvalue())
    plt.close(figure)


def _markdown(
    task: str,
    metrics: dict[str, Any],
    pairs: list[tuple[str, str]],
    labels: list[str],
    errors: list[dict[str, Any]],
    precision: Any,
    model_dir: Path,
    test_files: list[str],
) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

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
        "## Scores",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    scalar = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    lines += [f"| {k} | {fmt(v)} |" for k, v in scalar.items()]
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
        f"| {k} | {v['precision']:.4f} | {v['recall']:.4f} | {v['f1']:.4f} | {v['support']} |"
        for k, v in per.items()
    ]
    counts = {(a, p): 0 for a in labels for p in labels}
    for pair in pairs:
        counts[pair] += 1
    lines += [
        "",
        "## Confusion matrix"
        + (" (words, by entity type)" if task != "text_classification" else ""),
        "",
        "![confusion matrix](confusion_matrix.png)",
        "",
        "| actual \\ predicted | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    lines += [f"| {a} | " + " | ".join(str(counts[a, p]) for p in labels) + " |" for a in labels]
    lines += [
        "",
        f"## Highest-confidence mistakes ({min(len(errors), 10)} of {len(errors)}; "
        "the first evaluate.max_errors are in errors.jsonl)",
        "",
        "| confidence | gold | predicted | text |",
        "|---|---|---|---|",
    ]
    for error in errors[:10]:
        text = error["text"].replace("|", "\\|").replace("\n", " ")
        if task == "text_classification":
            gold, predicted = error["gold"], error["predicted"]
        else:
            gold = " ".join(f"{w['word']}/{w['gold']}" for w in error["wrong_words"])
            predicted = " ".join(f"{w['word']}/{w['predicted']}" for w in error["wrong_words"])
        lines.append(f"| {error['confidence']:.3f} | {gold} | {predicted} | {text[:200]} |")
    return "\n".join(lines) + "\n"


@app.command()
@stage_command("evaluate")
def main(
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
    tokenized_dir: Path = typer.Option(TOKENIZED_DIR, help="output of the tokenize stage"),
    model_dir: Path = typer.Option(MODEL_DIR, help="the trained model"),
    reports_dir: Path = typer.Option(REPORTS_DIR, help="where the reports go"),
) -> None:
    """Score models/model on the test split (see the module docstring)."""
    run_stage(load_params(params_path), tokenized_dir, model_dir, reports_dir)


def run_stage(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
    project: Path = PROJECT_ROOT,
) -> dict[str, Any]:
    """The stage inside its MLflow run: scores, reports, then the behavioural checks (whose
    gate, ``evaluate.behaviour.min_pass_rate``, may fail the stage once all is logged)."""
    from tasks.core import behaviour, tracking

    # The run is open (RUNNING) while the stage works; a failure ends it FAILED.
    with tracking.stage_run(params, "evaluate", state_dir, project):
        metrics = evaluate(params, tokenized_dir, model_dir, reports_dir)
        log_to_mlflow(metrics, Path(reports_dir))
        try:
            checked = behaviour.check_model(params, model_dir, reports_dir)
        finally:  # a failed gate still leaves its report in the run
            log_behaviour(Path(reports_dir))
        if checked is not None:
            log.info("behavioural checks: %s", behaviour.summary(checked))
    return metrics


def log_to_mlflow(metrics: dict[str, Any], reports_dir: Path) -> None:
    """Into the evaluate stage's active MLflow run: test metrics (``test_``) and reports."""
    import mlflow

    from tasks.core import tracking

    tracking.log_numbers(metrics, prefix="test_")
    tracking.log_to_parent(metrics, prefix="test_")  # the execution's headline metrics
    speed_path = reports_dir / SPEED_FILE
    if speed_path.exists():
        tracking.log_numbers(json.loads(speed_path.read_text()), prefix="test_")
    slices_path = reports_dir / SLICES_FILE
    if slices_path.exists():
        tracking.log_numbers(json.loads(slices_path.read_text())["slices"], prefix="slice.")
    names = ("metrics.json", SPEED_FILE, "eval_report.md", "confusion_matrix.png")
    names += ("confusion.csv", SLICES_FILE)
    for name in (*names, "errors.jsonl"):
        if (reports_dir / name).exists():
            mlflow.log_artifact(str(reports_dir / name), artifact_path="reports")


def log_behaviour(reports_dir: Path) -> None:
    """Into the active MLflow run: the behavioural checks' pass rates and report."""
    import mlflow

    from tasks.core import behaviour, tracking

    path = reports_dir / behaviour.REPORT_FILE
    if path.exists():
        tracking.log_numbers(behaviour.metrics_for_mlflow(json.loads(path.read_text())))
        for name in (behaviour.REPORT_FILE, "eval_report.md"):
            mlflow.log_artifact(str(reports_dir / name), artifact_path="reports")


if __name__ == "__main__":
    app()
