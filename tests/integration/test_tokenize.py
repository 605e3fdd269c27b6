"""The tokenize stage: sub-token alignment, truncation counts, manifest, bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT, project_env, tiny_params, write_toy_prepared

from tasks.core.data.encoding import encode_words
from tasks.core.data.labels import align_labels
from tasks.core.data.tokenized import load_tokenized
from tasks.core.data.tokenizing import tokenize
from tasks.core.errors import StageError
from tasks.core.pretrained.model import vocab_hash

TAG2ID = {"O": 0, "B-LOC": 1, "I-LOC": 2, "B-PER": 3, "I-PER": 4}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def run_tokenize(tmp_path, params, task="text_classification", **sizes):
    prepared = write_toy_prepared(tmp_path / "prepared", task, **sizes)
    out, report = tmp_path / "tokenized", tmp_path / "reports" / "tokenize.json"
    manifest = tokenize(params, prepared, out, report, tmp_path / "state")
    return manifest, out, report


def test_align_labels_first_subtoken_only():
    # [CLS] w0 w0 w1 w1 w1 w2 [SEP]
    word_ids = [None, 0, 0, 1, 1, 1, 2, None]
    assert align_labels(word_ids, [3, 4, 0]) == [-100, 3, -100, 4, -100, -100, 0, -100]


def test_words_split_into_subtokens_keep_one_label(tokenizer):
    # "xyzzy" is not in the vocabulary: it becomes x ##y ##z ##z ##y.
    frame = pd.DataFrame(
        {"tokens": [["alice", "xyzzy", "paris"]], "tags": [["B-PER", "O", "B-LOC"]]}
    )
    columns, stats = encode_words(tokenizer, frame, TAG2ID, max_length=32)
    pieces = tokenizer.convert_ids_to_tokens(columns["input_ids"][0])
    assert pieces == ["[CLS]", "alice", "x", "##y", "##z", "##z", "##y", "paris", "[SEP]"]
    assert columns["labels"][0] == [-100, 3, 0, -100, -100, -100, -100, 1, -100]
    assert columns["word_ids"][0] == [-1, 0, 1, 1, 1, 1, 1, 2, -1]
    assert columns["length"] == [9]  # unpadded
    assert stats["truncated"] == 0
    assert stats["words_without_subtokens"] == 0


def test_long_sentences_are_truncated_and_counted(tokenizer):
    frame = pd.DataFrame(
        {
            "tokens": [["alice"] * 20, ["bob", "paris"]],
            "tags": [["B-PER"] * 20, ["B-PER", "B-LOC"]],
        }
    )
    columns, stats = encode_words(tokenizer, frame, TAG2ID, max_length=8)
    assert stats["truncated"] == 1
    assert [len(ids) for ids in columns["input_ids"]] == [8, 4]
    # 6 words survive between [CLS] and [SEP]; the special tokens stay unlabelled.
    assert columns["labels"][0] == [-100] + [3] * 6 + [-100]
    assert stats["token_length"]["max"] == 22


def test_text_task_outputs_manifest_and_report(tmp_path, tiny_model_dir, tokenizer):
    params = tiny_params("text_classification", tiny_model_dir, tokenize={"max_length": 8})
    manifest, out, report = run_tokenize(tmp_path, params)
    data, loaded = load_tokenized(out)
    assert loaded == manifest
    assert manifest["labels"] == ["negative", "positive"]
    assert manifest["label2id"] == {"negative": 0, "positive": 1}
    assert manifest["counts"] == {"train": 240, "validation": 60, "test": 60}
    assert manifest["tokenizer"]["vocab_sha256"] == vocab_hash(tokenizer)
    assert manifest["tokenizer"]["name_or_path"] == str(tiny_model_dir)
    assert set(manifest["splits"]["train"]["token_length"]) >= {"p50", "p90", "p95", "p99", "max"}
    train = data["train"]
    lengths = [len(ids) for ids in train["input_ids"]]
    assert max(lengths) <= 8 and len(set(lengths)) > 1  # truncated, not padded
    assert train["length"] == lengths
    expected = sum(len(tokenizer(t)["input_ids"]) > 8 for t in train["text"])
    assert manifest["truncated"]["train"] == expected > 0
    metrics = json.loads(report.read_text())
    assert metrics["truncated"]["train"] == expected
    assert metrics["examples"]["test"] == 60
    assert train[0]["labels"] == manifest["label2id"][train[0]["label"]]


def test_token_task_label_map_from_train_entity_types(tmp_path, tiny_model_dir):
    params = tiny_params("token_classification", tiny_model_dir)
    manifest, out, _ = run_tokenize(tmp_path, params, "token_classification")
    assert manifest["labels"] == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    data, _ = load_tokenized(out)
    row = data["test"][0]
    first = [i for i, w in enumerate(row["word_ids"]) if w >= 0 and w != row["word_ids"][i - 1]]
    assert [manifest["labels"][row["labels"][i]] for i in first] == row["tags"]


def test_same_input_gives_identical_output_files(tmp_path, tiny_model_dir):
    params = tiny_params("text_classification", tiny_model_dir)
    _, first, _ = run_tokenize(tmp_path / "a", params)
    _, second, _ = run_tokenize(tmp_path / "b", params)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_label_unseen_in_train_is_an_error(tmp_path, tiny_model_dir):
    params = tiny_params("text_classification", tiny_model_dir)
    prepared = write_toy_prepared(tmp_path / "prepared")
    test = pd.read_parquet(prepared / "test.parquet")
    test.loc[3, "label"] = "neutral"
    test.to_parquet(prepared / "test.parquet")
    with pytest.raises(StageError, match=r"test split \(toy.csv:5\): label 'neutral' does not"):
        tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")
    assert not (tmp_path / "out").exists()


def test_entity_type_unseen_in_train_and_bad_tags_are_errors(tmp_path, tiny_model_dir):
    params = tiny_params("token_classification", tiny_model_dir)
    prepared = write_toy_prepared(tmp_path / "prepared", "token_classification")
    validation = pd.read_parquet(prepared / "validation.parquet")
    validation.at[0, "tags"] = ["B-ORG", *list(validation.at[0, "tags"])[1:]]
    validation.to_parquet(prepared / "validation.parquet")
    with pytest.raises(StageError, match=r"validation split: entity type.*'ORG'"):
        tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")
    validation.at[0, "tags"] = ["PER", *list(validation.at[0, "tags"])[1:]]
    validation.to_parquet(prepared / "validation.parquet")
    with pytest.raises(StageError, match="tag 'PER' is not IOB2"):
        tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")


def test_empty_split_and_missing_files_are_errors(tmp_path, tiny_model_dir):
    params = tiny_params("text_classification", tiny_model_dir)
    prepared = write_toy_prepared(tmp_path / "prepared")
    (prepared / "test.parquet").unlink()
    with pytest.raises(StageError, match=r"test\.parquet: not found"):
        tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")
    write_toy_prepared(prepared)
    validation = pd.read_parquet(prepared / "validation.parquet")
    validation.iloc[:0].to_parquet(prepared / "validation.parquet")
    with pytest.raises(StageError, match="the validation split is empty"):
        tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")


def test_unknown_model_directory_is_an_error(tmp_path, tiny_model_dir):
    prepared = write_toy_prepared(tmp_path / "prepared")
    for spec, message in [
        (str(tmp_path / "nowhere"), "is not a directory"),
        (str(tmp_path), "no model found"),
        ("bert-base-uncased", "needs model.revision, a commit sha: run `finetune model pin"),
        ("hf://bert-base-uncased", "is not supported"),
    ]:
        params = tiny_params("text_classification", spec)
        with pytest.raises(StageError, match=message):
            tokenize(params, prepared, tmp_path / "out", tmp_path / "r.json", tmp_path / "state")


def test_cli_reports_bad_input_without_traceback(tmp_path, tiny_model_dir):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["name_or_path"] = str(tmp_path / "missing-model")
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(raw))
    prepared = write_toy_prepared(tmp_path / "prepared")
    done = subprocess.run(
        [sys.executable, "-m", "tasks.tokenize", "--params", str(params_path),
         "--prepared-dir", str(prepared), "--output-dir", str(tmp_path / "out"),
         "--report", str(tmp_path / "tokenize.json"), "--state-dir", str(tmp_path / "state")],
        cwd=ROOT, env=project_env(), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert "tokenize: error: model.name_or_path:" in done.stderr
    assert "Traceback" not in done.stderr


def test_auto_max_length_is_the_train_percentile_capped_at_the_encoder(
    tmp_path, tiny_model_dir, tokenizer
):
    import numpy as np

    params = tiny_params("text_classification", tiny_model_dir, tokenize={"max_length": "auto"})
    manifest, out, _ = run_tokenize(tmp_path / "short", params)
    train = pd.read_parquet(tmp_path / "short" / "prepared" / "train.parquet")
    lengths = [len(tokenizer(t)["input_ids"]) for t in train["text"]]
    observed = int(np.percentile(lengths, 99.9, method="higher"))
    assert manifest["max_length"] == -(-observed // 8) * 8 >= observed  # a multiple of 8
    choice = manifest["max_length_choice"]
    assert choice["setting"] == "auto" and choice["train_length_at_percentile"] == observed
    assert choice["encoder_limit"]["value"] == 128  # the tiny BERT's position embeddings
    assert "max_position_embeddings" in choice["encoder_limit"]["source"]
    assert manifest["truncated"]["train"] == 0

    # One review far longer than the encoder takes: the value stops at its limit.
    prepared = write_toy_prepared(tmp_path / "long" / "prepared")
    frame = pd.read_parquet(prepared / "train.parquet")
    frame.loc[0, "text"] = " ".join(["good movie"] * 150)
    frame.to_parquet(prepared / "train.parquet")
    out = tmp_path / "long" / "tokenized"
    manifest = tokenize(params, prepared, out, tmp_path / "long" / "r.json", tmp_path / "state")
    assert manifest["max_length"] == 128 and manifest["truncated"]["train"] == 1
    assert "above the encoder's limit, 128" in manifest["max_length_choice"]["reason"]
    assert json.loads((out / "manifest.json").read_text())["max_length"] == 128

    # Token tasks take train's longest sentence: no word of a sentence as long is cut.
    token = tiny_params("token_classification", tiny_model_dir, tokenize={"max_length": "auto"})
    manifest, _, _ = run_tokenize(tmp_path / "token", token, "token_classification")
    longest = manifest["splits"]["train"]["token_length"]["max"]
    assert manifest["max_length_choice"]["percentile"] == 100
    assert manifest["max_length"] == -(-longest // 8) * 8
    assert manifest["splits"]["train"]["words_past_max_length"] == 0


def test_words_past_max_length_warn_and_fail_above_the_share(tmp_path, tiny_model_dir, caplog):
    # Toy sentences hold 4-15 words: at 8 sub-tokens many test words are cut off.
    params = tiny_params("token_classification", tiny_model_dir, tokenize={"max_length": 8})
    with pytest.raises(StageError) as caught:
        run_tokenize(tmp_path / "strict", params, "token_classification")
    message = str(caught.value)
    assert re.search(r"validation split: \d+ of \d+ words \(\d+\.\d%\)", message), message
    assert "test split" not in message  # evaluate predicts test in overlapping windows
    assert "tokenize.max_length=8" in message and "tokenize.max_unpredicted_share" in message
    assert not (tmp_path / "strict" / "tokenized").exists()  # nothing written

    lenient = tiny_params(
        "token_classification", tiny_model_dir,
        tokenize={"max_length": 8, "max_unpredicted_share": 1.0},
    )  # fmt: skip
    with caplog.at_level("WARNING", logger="tasks.core.data.truncation"):
        manifest, _, report = run_tokenize(tmp_path / "lenient", lenient, "token_classification")
    cut = manifest["splits"]["test"]["words_past_max_length"]
    assert 0 < cut < manifest["splits"]["test"]["words"]
    assert json.loads(report.read_text())["words_past_max_length"]["test"] == cut
    assert any(
        f"test: {cut} of" in r.message and "tokenize.max_length=8" in r.message
        for r in caplog.records
    )
    # With room for every sub-token nothing is cut.
    manifest, _, _ = run_tokenize(
        tmp_path / "roomy", tiny_params("token_classification", tiny_model_dir),
        "token_classification",
    )  # fmt: skip
    assert all(manifest["splits"][s]["words_past_max_length"] == 0 for s in manifest["splits"])


# --- document context (tokenize.context_tokens) -----------------------------------------------


def _documents_frame() -> pd.DataFrame:
    """Two documents of three sentences, stored out of reading order (as a split may be)."""
    rows = [  # (document, first line, words, tags)
        ("1", 30, ["bob", "is"], ["B-PER", "O"]),
        ("0", 1, ["alice", "was", "old"], ["B-PER", "O", "O"]),
        ("0", 9, ["paris", "is", "big"], ["B-LOC", "O", "O"]),
        ("1", 20, ["rome", "was"], ["B-LOC", "O"]),
        ("0", 5, ["it", "is", "bob"], ["O", "O", "B-PER"]),
        ("1", 40, ["alice", "was"], ["B-PER", "O"]),
    ]
    return pd.DataFrame(
        {
            "tokens": [r[2] for r in rows],
            "tags": [r[3] for r in rows],
            "group": [r[0] for r in rows],
            "source_file": "train.txt",
            "source_line": [r[1] for r in rows],
        }
    )


def test_document_context_surrounds_the_sentence_with_its_own_document(tokenizer):
    frame = _documents_frame()
    alone, _ = encode_words(tokenizer, frame, TAG2ID, max_length=64)
    columns, stats = encode_words(tokenizer, frame, TAG2ID, max_length=64, context_tokens=4)
    pieces = tokenizer.convert_ids_to_tokens(columns["input_ids"][4])  # "it is bob", doc 0
    # Up to 4 sub-tokens a side, whole words, nearest first: doc 0 reads alice was old /
    # it is bob / paris is big; document 1's sentences never appear.
    assert pieces == ["[CLS]", "alice", "was", "old", "it", "is", "bob", "paris", "is", "big",
                      "[SEP]"]  # fmt: skip
    assert columns["word_ids"][4] == [-1, -1, -1, -1, 0, 1, 2, -1, -1, -1, -1]
    assert columns["labels"][4] == [-100] * 4 + [0, 0, 3] + [-100] * 4
    # The first sentence of document 1 has only what follows it (4 sub-tokens), in order.
    assert tokenizer.convert_ids_to_tokens(columns["input_ids"][3]) == [
        "[CLS]", "rome", "was", "bob", "is", "alice", "was", "[SEP]"
    ]  # fmt: skip
    # Every sentence keeps its own labels on its own words: the context only adds -100.
    for with_context, own in zip(columns["labels"], alone["labels"], strict=True):
        assert [x for x in with_context if x != -100] == [x for x in own if x != -100]
    assert stats["context"] == {"documents": 2, "with_context": 6, "mean_context_subtokens": 4.3}


def test_document_context_stays_within_max_length(tokenizer):
    frame = _documents_frame()
    columns, stats = encode_words(tokenizer, frame, TAG2ID, max_length=8, context_tokens=64)
    assert max(columns["length"]) <= 8
    assert stats["truncated"] == 0
    # "it is bob" (3 + 2 special) leaves 3 sub-tokens: 1 before (half, rounded down) and
    # the rest after.
    assert tokenizer.convert_ids_to_tokens(columns["input_ids"][4]) == [
        "[CLS]", "old", "it", "is", "bob", "paris", "is", "[SEP]"
    ]  # fmt: skip
    # The last sentence of a document has nothing after it: the room goes to what precedes.
    assert tokenizer.convert_ids_to_tokens(columns["input_ids"][2]) == [
        "[CLS]", "it", "is", "bob", "paris", "is", "big", "[SEP]"
    ]  # fmt: skip


def test_document_context_without_documents_changes_nothing(tokenizer):
    frame = _documents_frame().drop(columns="group")
    alone, _ = encode_words(tokenizer, frame, TAG2ID, max_length=64)
    columns, stats = encode_words(tokenizer, frame, TAG2ID, max_length=64, context_tokens=16)
    assert columns == alone
    assert stats["context"]["reason"] == "no documents"


def test_document_context_is_refused_for_text_classification(tiny_model_dir):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"tokenize\.context_tokens: 8 is for"):
        tiny_params("text_classification", tiny_model_dir, tokenize={"context_tokens": 8})


def test_document_context_on_data_without_documents_is_said(tmp_path, tiny_model_dir, caplog):
    params = tiny_params("token_classification", tiny_model_dir, tokenize={"context_tokens": 8})
    with caplog.at_level("WARNING", logger="tasks.tokenize"):
        manifest, _, _ = run_tokenize(tmp_path, params, "token_classification")
    assert "train, validation, test without documents" in caplog.text
    assert manifest["splits"]["train"]["context"]["reason"] == "no documents"
