"""Score a model on the test split and write the evaluate stage's reports (the stage's
contract is in ``tasks/evaluate.py``). Register re-scores a registered version with it."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, NamedTuple

from tasks.core.config import Params, headline_metric
from tasks.core.data.batching import check_budget, position_cap, token_budget
from tasks.core.data.labels import entity_type, words_from_subtokens
from tasks.core.data.tokenized import load_tokenized
from tasks.core.entity_pipeline import windowed_words
from tasks.core.errors import StageError
from tasks.core.evaluation.eval_reports import (
    SLICES_FILE,
    SPEED_FILE,
    markdown,
    slices_markdown,
    text_errors,
    text_slices,
    token_errors,
    token_slices,
    write_confusion,
)
from tasks.core.evaluation.inference import predict
from tasks.core.io import write_atomic, write_json
from tasks.core.modeling.metrics import entity_scores, roc_auc, text_scores
from tasks.core.modeling.precision import choose_precision
from tasks.core.paths import MODEL_DIR, REPORTS_DIR, TOKENIZED_DIR
from tasks.core.pretrained.model import load_model, quiet_transformers, vocab_hash

log = logging.getLogger(__name__)


def _label_ids(model: Any, needed: set[str], what: str) -> dict[str, int]:
    label2id = {str(k): int(v) for k, v in model.config.label2id.items()}
    unknown = sorted(needed - set(label2id))
    if unknown:
        raise StageError(
            f"test split: {what} {', '.join(map(repr, unknown))} not in the model's label map "
            f"({', '.join(label2id)}); re-run train on data with these labels"
        )
    return label2id


def _predict_cut_sentences(
    model: Any,
    tokenizer: Any,
    test: Any,
    max_length: int,
    id2label: dict[int, str],
    tags: list[list[str]],
    confidences: list[list[float | None]],
) -> int:
    """Predict again in overlapping windows every sentence truncation cut, replacing its tags
    and confidences in place; returns their number."""
    cut = [
        i
        for i, (length, sentence) in enumerate(zip(test["length"], confidences, strict=True))
        if length >= max_length and None in sentence
    ]
    for i in cut:
        words = [str(w) for w in test[i]["tokens"]]
        tags[i], confidences[i] = windowed_words(model, tokenizer, words, max_length, id2label)
    return len(cut)


class Scored(NamedTuple):
    """What one task's scoring hands to the reports."""

    metrics: dict[str, Any]
    pairs: list[tuple[str, str]]
    matrix_labels: list[str]
    slices: dict[str, Any]
    errors: list[dict[str, Any]]


def evaluate(
    params: Params,
    tokenized_dir: Path = TOKENIZED_DIR,
    model_dir: Path = MODEL_DIR,
    reports_dir: Path = REPORTS_DIR,
) -> dict[str, Any]:
    """Score ``model_dir`` on the tokenized test split; write metrics.json (scores only:
    timings go to inference_speed.json), slices, confusion, errors and eval_report.md into
    ``reports_dir``. Returns metrics.json's content."""
    quiet_transformers()
    test, manifest, model, tokenizer = _load_matching(params.task, tokenized_dir, model_dir)
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    labels = [id2label[i] for i in range(len(id2label))]
    precision = choose_precision(params.train.precision)
    max_tokens = token_budget(params.evaluate.max_tokens_per_batch, precision.device, "inference")
    check_budget(
        max_tokens, list(test["length"]), position_cap(tokenizer), "evaluate.max_tokens_per_batch"
    )
    probabilities, timing = predict(
        model, tokenizer, test, params.task, params.evaluate.batch_size, precision, max_tokens
    )
    reports_dir = Path(reports_dir)
    reports_dir.mkdir(parents=True, exist_ok=True)
    if params.task == "text_classification":
        scored = _score_text(model, test, probabilities, labels)
    else:
        scored = _score_tokens(model, tokenizer, test, manifest, probabilities, id2label, labels)
    speed = {
        **timing,
        "batch_size": params.evaluate.batch_size,
        "max_tokens_per_batch": max_tokens,
        "dtype": str(precision.dtype).removeprefix("torch."),
        "device": str(precision.device),
    }
    _write_reports(params, scored, speed, test, precision, model_dir, reports_dir)
    headline = headline_metric(params.task)
    log.info(
        "test: %d examples, %s %.4f, %s samples/s (%s on %s); %d errors listed",
        len(test), headline, scored.metrics[headline], timing["samples_per_second"],
        precision.dtype, precision.device, min(len(scored.errors), params.evaluate.max_errors),
    )  # fmt: skip
    return scored.metrics


def _load_matching(task: str, tokenized_dir: Path, model_dir: Path) -> tuple[Any, ...]:
    """(test split, tokenize manifest, model, tokenizer); raises StageError when the test
    split was tokenized with another tokenizer than the model's."""
    data, manifest = load_tokenized(tokenized_dir, task, ("test",))
    model, tokenizer = load_model(model_dir, task)
    if vocab_hash(tokenizer) != manifest["tokenizer"]["vocab_sha256"]:
        raise StageError(
            f"{tokenized_dir} was tokenized with another tokenizer than the model in "
            f"{model_dir}; re-run tokenize and train"
        )
    return data["test"], manifest, model, tokenizer


def _score_text(model: Any, test: Any, probabilities: Any, labels: list[str]) -> Scored:
    """Text classification: class scores (ROC AUC for two classes), slices and mistakes."""
    import numpy as np

    label2id = _label_ids(model, set(test["label"]), "label(s)")
    gold = [label2id[g] for g in test["label"]]
    predicted = [int(np.argmax(p)) for p in probabilities]
    metrics: dict[str, Any] = {
        "samples": len(test),
        **text_scores(gold, predicted, labels, True),
    }
    if len(labels) == 2:
        metrics["roc_auc"] = roc_auc(gold, [float(p[1]) for p in probabilities])
    pairs = [(labels[g], labels[p]) for g, p in zip(gold, predicted, strict=True)]
    slices = text_slices(list(test["text"]), gold, predicted, labels)
    errors = text_errors(test, gold, predicted, probabilities, labels)
    return Scored(metrics, pairs, labels, slices, errors)


def _score_tokens(
    model: Any,
    tokenizer: Any,
    test: Any,
    manifest: dict[str, Any],
    probabilities: Any,
    id2label: dict[int, str],
    labels: list[str],
) -> Scored:
    """Token classification: word-level tags, entity scores, per-type slices and mistakes."""
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
    windowed = _predict_cut_sentences(
        model, tokenizer, test, manifest["max_length"], id2label, predicted_tags, confidences
    )
    missing = sum(c is None for sentence in confidences for c in sentence)
    metrics = {
        "samples": len(test),
        "words": sum(len(s) for s in gold_tags),
        "words_not_predicted": missing,  # words without sub-tokens: scored as O
        "truncated_sentences": int(manifest["truncated"]["test"]),
        "windowed_sentences": windowed,  # those predicted in overlapping windows
        **entity_scores(gold_tags, predicted_tags, detailed=True),
    }
    pairs = [
        (entity_type(g) or "O", entity_type(p) or "O")
        for gs, ps in zip(gold_tags, predicted_tags, strict=True)
        for g, p in zip(gs, ps, strict=True)
    ]
    errors = token_errors(test, gold_tags, predicted_tags, confidences)
    slices = token_slices(gold_tags, predicted_tags, metrics["per_type"])
    matrix_labels = ["O", *sorted({entity_type(t) for t in labels} - {None})]
    return Scored(metrics, pairs, matrix_labels, slices, errors)


def _write_reports(
    params: Params,
    scored: Scored,
    speed: dict[str, Any],
    test: Any,
    precision: Any,
    model_dir: Path,
    reports_dir: Path,
) -> None:
    """Write the evaluate reports (errors most confident first; sorts ``scored.errors``)."""
    test_files = sorted(set(test["source_file"])) if "source_file" in test.column_names else []
    metrics, pairs, matrix_labels, slices, errors = scored
    write_confusion(reports_dir, pairs, matrix_labels)
    errors.sort(key=lambda e: -e["confidence"])
    listed = errors[: params.evaluate.max_errors]
    write_atomic(
        reports_dir / "errors.jsonl",
        "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in listed),
    )
    write_json(reports_dir / "metrics.json", metrics)
    write_json(reports_dir / SPEED_FILE, speed)
    write_json(reports_dir / SLICES_FILE, slices)
    report = markdown(
        params.task, metrics, pairs, matrix_labels, errors, precision, model_dir, test_files
    )
    write_atomic(reports_dir / "eval_report.md", report + slices_markdown(slices))
