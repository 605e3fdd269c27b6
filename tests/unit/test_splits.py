"""Splits that respect the data: given files kept as they are, CoNLL documents as groups,
empty splits explained, and where validation and test come from (issue 16, item 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import Params
from tasks.core.data.sources import _parse_conll
from tasks.core.data.splitting import split_frame
from tasks.core.errors import StageError
from tasks.prepare import prepare

SPLITS = ("train", "validation", "test")
TEXT = {"text_column": "review", "label_column": "sentiment"}


def params_for(task: str = "text_classification", data: dict | None = None, **prepare_keys):
    """Validated params: the defaults, ``data`` and ``prepare`` keys (no params.yaml read)."""
    return Params.model_validate({"task": task, "data": data or {}, "prepare": prepare_keys})


def run(tmp_path: Path, params: Params) -> dict:
    summary = prepare(params, tmp_path / "prepared", tmp_path / "raw")
    assert summary == json.loads((tmp_path / "prepared" / "summary.json").read_text())
    return summary


def written(tmp_path: Path, split: str) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "prepared" / f"{split}.parquet")


def csv_file(path: Path, rows: list[tuple[str, str]], header: str = "review,sentiment") -> Path:
    path.write_text("\n".join([header, *(",".join(row) for row in rows)]) + "\n")
    return path


def reviews(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"{prefix} review {i}", "pos" if i % 3 else "neg") for i in range(n)]


def conll_documents(documents: int, sentences: int, docstart: bool = True) -> str:
    """``documents`` documents of ``sentences`` distinct sentences each."""
    lines = []
    for d in range(documents):
        if docstart:
            lines += ["-DOCSTART- -X- -X- O", ""]
        for s in range(sentences):
            lines += [f"Word{d}x{s} NNP B-NP B-PER", "said VBD B-VP O", ""]
    return "\n".join(lines)


def documents_of(frame: pd.DataFrame) -> set[str]:
    """The document of each sentence, read back from its first token (WordDxS)."""
    return {tokens[0][4:].split("x")[0] for tokens in frame["tokens"]}


# --- 1. given validation and test files are never altered ------------------------------------


def test_given_validation_and_test_files_are_kept_as_they_are(tmp_path):
    train_rows = reviews("train", 30) + [("train review 1", "pos")] * 3  # 3 repeats
    validation_rows = [*reviews("val", 8), ("val review 0", "neg"), ("train review 2", "pos")]
    test_rows = reviews("test", 6) + [("test review 1", "pos")] * 2 + [("train review 4", "pos")]
    files = {
        "train": csv_file(tmp_path / "train.csv", train_rows),
        "validation": csv_file(tmp_path / "validation.csv", validation_rows),
        "test": csv_file(tmp_path / "test.csv", test_rows),
    }
    data = {"source": {s: str(p) for s, p in files.items()}, **TEXT}
    summary = run(tmp_path, params_for(data=data))
    for split, rows in (("validation", validation_rows), ("test", test_rows)):
        frame = written(tmp_path, split)
        assert list(zip(frame["text"], frame["label"], strict=True)) == rows  # same rows, order
        assert frame["source_line"].tolist() == list(range(2, len(rows) + 2))
    assert len(written(tmp_path, "train")) == 30
    assert summary["duplicates_removed"] == 3
    assert summary["deduplicated"].startswith("the train file only")
    assert summary["given_files"] == {
        "validation": {"repeated_rows": 1, "rows_in_train": 1},
        "test": {"repeated_rows": 2, "rows_in_train": 1},
    }


def test_max_examples_still_cuts_given_files(tmp_path):
    files = {s: csv_file(tmp_path / f"{s}.csv", reviews(s, 12)) for s in SPLITS}
    data = {"source": {s: str(p) for s, p in files.items()}, **TEXT}
    summary = run(tmp_path, params_for(data=data, max_examples=5))
    assert {summary["splits"][s]["examples"] for s in SPLITS} == {5}
    assert written(tmp_path, "test")["text"].tolist() == [f"test review {i}" for i in range(5)]
    assert summary["max_examples"] == {"limit": 5, "rows_cut": dict.fromkeys(SPLITS, 7)}


# --- 4. validation_origin and test_origin for every layout -----------------------------------


def test_origins_for_every_layout(tmp_path):
    one = csv_file(tmp_path / "all.csv", reviews("all", 100))
    train = csv_file(tmp_path / "train.csv", reviews("train", 100))
    validation = csv_file(tmp_path / "validation.csv", reviews("val", 10))
    test = csv_file(tmp_path / "test.csv", [*reviews("test", 10), ("train review 5", "pos")])
    layouts = {
        "single": {"path": str(one)},
        "train+test": {"train": str(train), "test": str(test)},
        "train+validation+test": {
            "train": str(train),
            "validation": str(validation),
            "test": str(test),
        },
    }
    summaries = {
        name: run(tmp_path / name, params_for(data={"source": source, **TEXT}))
        for name, source in layouts.items()
    }
    single = summaries["single"]
    assert single["validation_origin"] == f"split from the single source {one} " + (
        "(prepare.split.validation = 0.1)"
    )
    assert single["test_origin"] == f"split from the single source {one} " + (
        "(prepare.split.test = 0.1)"
    )
    assert single["deduplicated"] == "the single source, before splitting"
    assert "given_files" not in single
    held = summaries["train+test"]
    assert held["validation_origin"] == (
        f"held out from the train file {train} (prepare.split.validation = 0.1)"
    )
    assert held["test_origin"] == f"the test file {test}, as given"
    assert held["given_files"] == {"test": {"repeated_rows": 0, "rows_in_train": 1}}
    given = summaries["train+validation+test"]
    assert given["validation_origin"] == f"the validation file {validation}, as given"
    assert given["test_origin"] == f"the test file {test}, as given"
    assert set(given["given_files"]) == {"validation", "test"}


def test_builtin_origin_says_split_from_the_builtin():
    from tasks.core.data.split_summary import _lineage

    frame = pd.DataFrame({"text": ["a"], "label": ["x"]})
    lineage = _lineage(params_for(), dict.fromkeys(SPLITS, frame), [], 0)
    assert lineage["validation_origin"] == (
        "split from the single source rotten_tomatoes (prepare.split.validation = 0.1)"
    )


# --- 2. CoNLL documents are groups ----------------------------------------------------------


def test_conll_records_the_document_of_each_sentence():
    text = "\n".join(
        [
            "Before B-PER",  # before any -DOCSTART-: a document of its own
            "",
            "-DOCSTART- O",
            "",
            "-DOCSTART- O",  # an empty document is not counted
            "",
            "One B-LOC",
            "",
            "Two O",
            "-DOCSTART- O",
            "Three O",
        ]
    )
    frame = _parse_conll(text, "x.conll", 0, -1)
    assert frame["tokens"].map(list).tolist() == [["Before"], ["One"], ["Two"], ["Three"]]
    assert frame["group"].tolist() == ["0", "1", "1", "2"]
    assert frame["source_line"].tolist() == [1, 7, 9, 11]
    without = _parse_conll("One B-LOC\n\nTwo O\n", "y.conll", 0, -1)
    assert "group" not in without.columns  # each sentence is its own unit, as before


def test_conll_single_file_never_splits_a_document(tmp_path):
    source = tmp_path / "ner.conll"
    source.write_text(conll_documents(6, 5))
    data = {"source": {"path": str(source)}}
    ratios = {"train": 0.6, "validation": 0.2, "test": 0.2}
    params = params_for("token_classification", data, split=ratios)
    summary = run(tmp_path, params)
    found = {s: documents_of(written(tmp_path, s)) for s in SPLITS}
    assert sum(len(d) for d in found.values()) == 6  # each document in exactly one split
    assert {s: summary["splits"][s]["groups"] for s in SPLITS} == {
        "train": 4,
        "validation": 1,
        "test": 1,
    }
    assert {s: summary["splits"][s]["examples"] for s in SPLITS} == {
        "train": 20,
        "validation": 5,
        "test": 5,
    }
    assert summary["grouped_by"].startswith("document (-DOCSTART-")
    frame = pd.DataFrame(_parse_conll(source.read_text(), str(source), 0, -1))
    for seed in range(8):  # whatever the seed, no document straddles two splits
        splits = split_frame(frame, params.prepare.split, seed)
        owners = [set(splits[s]["group"]) for s in SPLITS]
        assert sum(map(len, owners)) == 6 and len(set().union(*owners)) == 6


def test_conll_validation_held_out_of_train_by_document(tmp_path):
    train, test = tmp_path / "train.conll", tmp_path / "test.conll"
    train.write_text(conll_documents(10, 4))
    test.write_text(conll_documents(2, 3))
    data = {"source": {"train": str(train), "test": str(test)}}
    ratios = {"train": 0.8, "validation": 0.2, "test": 0.0}
    summary = run(tmp_path, params_for("token_classification", data, split=ratios))
    kept, held = (
        documents_of(written(tmp_path, "train")),
        documents_of(written(tmp_path, "validation")),
    )
    assert not kept & held and len(kept | held) == 10
    assert summary["splits"]["validation"]["groups"] == len(held) == 2
    assert summary["splits"]["test"]["groups"] == 2


def test_group_column_is_refused_for_conll(tmp_path):
    source = tmp_path / "ner.conll"
    source.write_text(conll_documents(2, 2))
    data = {"source": {"path": str(source)}, "group_column": "doc"}
    with pytest.raises(StageError, match="grouped by their -DOCSTART- document automatically"):
        run(tmp_path, params_for("token_classification", data))
    assert not (tmp_path / "prepared").exists()


def test_group_column_works_for_jsonl(tmp_path):
    source = tmp_path / "reviews.jsonl"
    lines = [
        json.dumps({"review": f"review {i}", "sentiment": i % 2, "movie": i % 10})
        for i in range(100)
    ]
    source.write_text("\n".join(lines) + "\n")
    data = {"source": {"path": str(source)}, **TEXT, "group_column": "movie"}
    summary = run(tmp_path, params_for(data=data))
    movies = {s: set(written(tmp_path, s)["group"]) for s in SPLITS}
    assert set().union(*movies.values()) == {str(m) for m in range(10)}  # strings, as in CSV
    assert sum(map(len, movies.values())) == 10
    assert sum(summary["splits"][s]["groups"] for s in SPLITS) == 10
    assert summary["grouped_by"] == "data.group_column 'movie'"


# --- 3. an empty split says why ---------------------------------------------------------------


def test_empty_split_after_deduplication_explains_the_counts(tmp_path):
    source = csv_file(tmp_path / "r.csv", [("same", "pos")] * 30 + [("other", "neg")] * 30)
    with pytest.raises(StageError) as raised:
        run(tmp_path, params_for(data={"source": {"path": str(source)}, **TEXT}))
    message = str(raised.value)
    assert f"the single source {source} had 60 rows, 58 removed as duplicates" in message
    assert "leaving 2 rows in 2 distinct texts" in message
    assert "prepare.split.*" in message and "prepare.deduplicate: false" in message
    assert not (tmp_path / "prepared").exists()


@pytest.mark.parametrize("documents,sentences", [(6, 5), (1, 40)])
def test_too_few_documents_are_split_by_sentence_and_said(tmp_path, documents, sentences):
    """0.8/0.1/0.1 of 6 equal documents leaves a split empty, and one -DOCSTART- line then
    every sentence (the common layout) is one document: sentences become the units."""
    source = tmp_path / "ner.conll"
    source.write_text(conll_documents(documents, sentences))
    params = params_for("token_classification", {"source": {"path": str(source)}})
    summary = run(tmp_path, params)
    total = documents * sentences
    assert sum(s["examples"] for s in summary["splits"].values()) == total
    assert all(s["examples"] > 0 for s in summary["splits"].values())
    expected = f"sentence ({documents} documents: too few to keep each in one split)"
    assert summary["grouped_by"] == expected


def test_enough_documents_stay_whole(tmp_path):
    source = tmp_path / "ner.conll"
    source.write_text(conll_documents(30, 3))
    params = params_for("token_classification", {"source": {"path": str(source)}})
    summary = run(tmp_path, params)
    assert summary["grouped_by"].startswith("document")
    splits = [documents_of(written(tmp_path, split)) for split in ("train", "validation", "test")]
    assert not (splits[0] & splits[1]) and not (splits[0] & splits[2])


def test_empty_split_from_too_few_sentences_counts_them(tmp_path):
    source = tmp_path / "ner.conll"
    source.write_text(conll_documents(1, 2))
    params = params_for("token_classification", {"source": {"path": str(source)}})
    with pytest.raises(StageError) as raised:  # 2 sentences cannot fill three splits
        run(tmp_path, params)
    message = str(raised.value)
    assert f"is empty: the single source {source} had 2 rows, 0 removed as dup" in message
    assert "prepare.split.*" in message


def test_empty_split_from_groups_names_group_column(tmp_path):
    rows = [(f"r {i}", f"pos,m{i % 2}") for i in range(40)]  # two movies of 20 reviews
    train = csv_file(tmp_path / "train.csv", rows, "review,sentiment,movie")
    test = csv_file(tmp_path / "test.csv", [("t", "neg,m9")], "review,sentiment,movie")
    data = {
        "source": {"train": str(train), "test": str(test)},
        **TEXT,
        "group_column": "movie",
    }
    with pytest.raises(StageError) as raised:
        run(tmp_path, params_for(data=data))
    message = str(raised.value)
    assert f"split 'validation' is empty: the train file {train} had 40 rows" in message
    assert "40 rows in 2 groups" in message
    assert "prepare.split.validation = 0.1 of them held out" in message
    assert "data.group_column: null" in message
