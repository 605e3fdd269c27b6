"""The evaluate stage: hand-checked scores, reports, errors, bad input, and the whole chain
through ``dvc repro`` (on the tiny encoder; the packaged one: test_behaviour.py)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import (
    build_tiny_model,
    make_project,
    run,
    set_params,
    start_point_in,
    tiny_params,
    toy_text_frame,
    write_toy_prepared,
)

from tasks.core.data.labels import words_from_subtokens
from tasks.core.errors import StageError
from tasks.core.evaluation.scoring import evaluate
from tasks.core.modeling.metrics import entity_scores, text_scores


def test_entity_scores_match_hand_computed_values():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-LOC", "O", "B-PER"]]
    pred = [["B-PER", "I-PER", "O", "I-LOC"], ["B-LOC", "O", "B-LOC"]]
    scores = entity_scores(gold, pred, detailed=True)
    # Gold: PER, LOC | LOC, PER (4). Predicted, strict IOB2: PER | LOC, LOC (3); the lone
    # I-LOC starts no entity in strict mode. Right: PER (sentence 1), LOC (sentence 2).
    assert scores["precision_micro"] == pytest.approx(2 / 3)
    assert scores["recall_micro"] == pytest.approx(2 / 4)
    assert scores["f1_micro"] == pytest.approx(4 / 7)  # 2PR / (P + R)
    assert scores["per_type"]["PER"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert scores["per_type"]["LOC"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert scores["precision_macro"] == pytest.approx(0.75)
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert scores["token_accuracy"] == pytest.approx(5 / 7)  # words, not entities


def test_text_scores_match_hand_computed_values():
    scores = text_scores([0, 0, 1, 1], [0, 1, 1, 1], ["neg", "pos"], detailed=True)
    assert scores["accuracy"] == 0.75
    # neg: P 1, R 0.5, F1 2/3; pos: P 2/3, R 1, F1 0.8.
    assert scores["f1_macro"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert scores["f1_weighted"] == pytest.approx((2 / 3 + 0.8) / 2)  # equal supports
    assert scores["per_class"]["neg"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert scores["per_class"]["pos"]["precision"] == pytest.approx(2 / 3)


def test_word_tags_come_from_first_subtokens():
    # [CLS] w0 w0' w1 [SEP]; w2 was truncated away.
    tags, confidence = words_from_subtokens(
        [-1, 0, 0, 1, -1], ["O", "B-PER", "I-LOC", "B-LOC", "O"], [0.9, 0.8, 0.7, 0.6, 0.5], 3
    )
    assert tags == ["B-PER", "B-LOC", "O"]
    assert confidence == [0.8, 0.6, None]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_model_dir):
    return build_tiny_model(
        tmp_path_factory.mktemp("text"), tiny_model_dir, "text_classification", 3
    )


def test_text_report_on_test_split(tmp_path, text_model):
    params, tokenized, model_dir = text_model
    metrics = evaluate(params, tokenized, model_dir, tmp_path)
    assert metrics["samples"] == 60
    assert metrics["accuracy"] >= 0.9 and metrics["f1_macro"] >= 0.9
    assert metrics["roc_auc"] >= 0.9
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert sum(c["support"] for c in metrics["per_class"].values()) == 60
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    speed = json.loads((tmp_path / "inference_speed.json").read_text())
    assert speed["samples_per_second"] > 0 and speed["tokens_per_second"] > 0
    assert speed["batch_size"] == params.evaluate.batch_size
    assert not {"inference_seconds", "samples_per_second", "batch_size"} & set(metrics)

    with (tmp_path / "confusion.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 60 and set(rows[0]) == {"actual", "predicted"}
    assert sum(r["actual"] == r["predicted"] for r in rows) == round(metrics["accuracy"] * 60)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    report = (tmp_path / "eval_report.md").read_text()
    assert "| accuracy |" in report and "![confusion matrix](confusion_matrix.png)" in report
    assert "| negative |" in report


def test_errors_list_highest_confidence_mistakes_first(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    params, tokenized, _ = build_tiny_model(
        tmp_path, tiny_model_dir, "text_classification", 0, evaluate={"max_errors": 5}
    )
    untrained = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )  # fmt: skip
    untrained.save_pretrained(tmp_path / "untrained")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "untrained")
    metrics = evaluate(params, tokenized, tmp_path / "untrained", tmp_path / "reports")
    errors = [json.loads(line) for line in (tmp_path / "reports/errors.jsonl").open()]
    assert len(errors) == 5 < round((1 - metrics["accuracy"]) * 60)
    assert [e["confidence"] for e in errors] == sorted(
        (e["confidence"] for e in errors), reverse=True
    )
    for error in errors:
        assert error["gold"] != error["predicted"]
        assert error["text"] and error["source_file"] == "toy.csv"
        assert error["confidence"] >= 0.5 >= error["gold_probability"]


def test_sentences_cut_by_max_length_are_predicted_in_windows(tmp_path, tiny_model_dir):
    params, tokenized, model_dir = build_tiny_model(
        tmp_path, tiny_model_dir, "token_classification", 3,
        tokenize={"max_length": 10, "max_unpredicted_share": 1.0},  # cut words on purpose
    )  # fmt: skip
    metrics = evaluate(params, tokenized, model_dir, tmp_path / "reports")
    from tasks.core.data.tokenized import load_tokenized

    data, manifest = load_tokenized(tokenized)
    test = data["test"]
    lost = sum(
        len(tags) - len({w for w in ids if w >= 0})
        for tags, ids in zip(test["tags"], test["word_ids"], strict=True)
    )
    assert lost > 0  # words the encoded examples lack
    assert metrics["truncated_sentences"] == manifest["truncated"]["test"] > 0
    assert metrics["windowed_sentences"] == metrics["truncated_sentences"]
    assert metrics["words_not_predicted"] == 0  # every word, in overlapping windows
    assert metrics["words"] == sum(len(t) for t in test["tags"])
    assert set(metrics["per_type"]) == {"LOC", "PER"}
    assert metrics["precision_micro"] >= 0.9 and metrics["recall_micro"] >= 0.9
    with (tmp_path / "reports/confusion.csv").open() as handle:
        assert sum(1 for _ in handle) == metrics["words"] + 1
    report = (tmp_path / "reports/eval_report.md").read_text()
    assert "strict IOB2" in report and "| token_accuracy |" in report


def test_token_model_with_document_context_is_scored_on_each_sentence_alone(
    tmp_path, tiny_model_dir
):
    """tokenize.context_tokens: a sentence is encoded between its document's neighbours;
    evaluate predicts and scores exactly the sentence's own words, none of the context."""
    import pandas as pd

    from tasks.core.data.tokenized import load_tokenized
    from tasks.core.data.tokenizing import tokenize
    from tasks.train import train

    params = tiny_params(
        "token_classification", tiny_model_dir, train={"epochs": 3},
        tokenize={"max_length": 48, "context_tokens": 12},
    )  # fmt: skip
    prepared = write_toy_prepared(tmp_path / "prepared", "token_classification")
    for path in prepared.glob("*.parquet"):  # documents of 4 sentences, as prepare marks them
        frame = pd.read_parquet(path)
        frame["group"] = [str(i // 4) for i in range(len(frame))]
        frame.to_parquet(path)
    tokenized = tmp_path / "tokenized"
    manifest = tokenize(params, prepared, tokenized, tmp_path / "tokenize.json", tmp_path)
    assert manifest["context_tokens"] == 12
    assert manifest["splits"]["test"]["context"]["with_context"] == 60
    data, _ = load_tokenized(tokenized)
    test = data["test"]
    assert sum(test["length"]) > sum(len(t) for t in test["tags"]) + 2 * 60 + 60 * 10
    train(params, tokenized, tmp_path / "model", tmp_path / "train", tmp_path)
    metrics = evaluate(params, tokenized, tmp_path / "model", tmp_path / "reports")
    assert metrics["words"] == sum(len(t) for t in test["tags"])
    assert metrics["words_not_predicted"] == 0
    assert metrics["f1_micro"] >= 0.9  # the toy entities are easy; context words are not scored
    with (tmp_path / "reports/confusion.csv").open() as handle:
        assert sum(1 for _ in handle) == metrics["words"] + 1


def test_bad_inputs_are_clear_errors(tmp_path, tiny_model_dir, text_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    params, tokenized, _ = text_model
    with pytest.raises(StageError, match="run the train stage first"):
        evaluate(params, tokenized, tmp_path / "missing", tmp_path / "reports")
    other = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=2, id2label={0: "negative", 1: "neutral"},
        label2id={"negative": 0, "neutral": 1},
    )  # fmt: skip
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "other")
    with pytest.raises(StageError, match="'positive' not in the model's label map"):
        evaluate(params, tokenized, tmp_path / "other", tmp_path / "reports")
    with pytest.raises(StageError, match="holds text_classification data"):
        evaluate(tiny_params("token_classification", tiny_model_dir), tokenized, tmp_path, tmp_path)


def test_dvc_repro_runs_the_model_stages_then_reruns_only_what_changed(tmp_path, tiny_model_dir):
    """The chain through ``dvc repro`` on the tiny random BERT and toy reviews (the packaged
    encoder's accuracy through the same stages: tests/integration/test_behaviour.py)."""
    project = make_project(tmp_path / "project")
    toy_text_frame(300, seed=4)[["text", "label"]].to_csv(
        project / "data/external/toy.csv", index=False
    )
    start_point_in(project, tiny_model_dir)
    set_params(
        project,
        **{
            "data.source": {"path": "data/external/toy.csv"},
            "model.name_or_path": "models/pretrained/tiny",
            "tokenize.max_length": 32,
            "train.epochs": 1,
            "train.batch_size": 16,
            "train.learning_rate": 1e-2,
            "train.precision": "fp32",
            "tune.enabled": False,  # tuning has its own tests; train uses params.yaml
        },
    )
    first = run(["dvc", "repro", "evaluate"], project)
    for stage in ("tokenize", "train", "evaluate"):
        assert f"Running stage '{stage}'" in first.stdout
    metrics = json.loads((project / "reports/metrics.json").read_text())
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert metrics["samples"] == summary["splits"]["test"]["examples"] > 0
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["roc_auc"] <= 1
    trained = json.loads((project / "reports/train_metrics.json").read_text())
    assert trained["epochs_run"] == 1 and trained["head"] == "new"
    assert (project / "models/model/model.safetensors").is_file()
    manifest = json.loads((project / "data/tokenized/manifest.json").read_text())
    assert manifest["tokenizer"]["name_or_path"] == "models/pretrained/tiny"

    shown = json.loads(run(["dvc", "metrics", "show", "--json"], project).stdout)
    assert "accuracy" in json.dumps(shown) and "train_samples_per_second" in json.dumps(shown)
    # Nothing changed: nothing runs. A report-only param reruns evaluate alone, and leaves
    # metrics.json (register's input) byte-identical: register stays up to date.
    assert "Running stage" not in run(["dvc", "repro", "evaluate"], project).stdout
    scores = (project / "reports/metrics.json").read_bytes()
    set_params(project, **{"evaluate.max_errors": 3})
    third = run(["dvc", "repro", "evaluate"], project)
    assert "Running stage 'evaluate'" in third.stdout
    assert "Running stage 'train'" not in third.stdout
    assert (project / "reports/metrics.json").read_bytes() == scores
    assert len((project / "reports/errors.jsonl").read_text().splitlines()) <= 3
    diff = run(["dvc", "metrics", "diff", "--json"], project)
    assert diff.returncode == 0
