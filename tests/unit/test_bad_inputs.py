"""Hostile and malformed input files: each is refused by prepare with a message that names
the file, the line (where there is one), the field or column and the value, or is accepted
as the table in docs/your-data.md says. One case per row of that table (prepare's part;
validate's gates are in test_validate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tasks.core.config import Params
from tasks.core.errors import StageError
from tasks.prepare import prepare


def _jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


GOOD_CSV = "text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40))
GOOD_ROWS = [{"text": f"text {i}", "label": "ab"[i % 2]} for i in range(40)]
CONLL_OK = "".join(f"w{i} {'B-PER' if i % 3 == 0 else 'O'}\n\n" for i in range(40))

# (id, file name, content (str or bytes), data overrides, task, expected fragments)
REFUSED = [
    ("empty file", "a.csv", "", {}, None, ["a.csv: file is empty"]),
    ("whitespace only", "a.csv", " \n\t\n", {}, None, ["a.csv: file is empty"]),
    ("unknown extension", "a.xlsx", "x", {}, None, ["cannot tell the format", "'.xlsx'"]),
    ("unknown encoding", "a.csv", GOOD_CSV, {"encoding": "klingon"}, None, ["'klingon'"]),
    (
        "invalid UTF-8 byte",
        "a.csv",
        b"text,label\nok,a\ncaf\xe9,b\n",
        {},
        None,
        ["a.csv:3: not valid utf-8", "0xe9", "column 4", "data.encoding"],
    ),
    (
        "invalid UTF-8 after the first MB",
        "a.csv",
        b"text,label\n" + b"x" * (1 << 20) + b",a\nok,b\nbad\xff,a\n",
        {},
        None,
        ["a.csv:4: not valid utf-8", "0xff", "column 4"],
    ),
    (
        "too many fields",
        "a.csv",
        "text,label\nok,a\nx,y,z\n",
        {},
        None,
        ["a.csv:3: expected 2 fields (text, label), got 3", "'x,y,z'"],
    ),
    ("too few fields", "a.csv", "text,label\nonly\n", {}, None, ["a.csv:2: expected 2 fields"]),
    (
        "a header naming the text column twice",
        "a.csv",
        "text,text,label\nx,y,a\n",
        {},
        None,
        ["a.csv:1: the header names the text column 'text' 2 times", "data.text_column"],
    ),
    (
        "malformed quoting",
        "a.csv",
        'text,label\n"a "b" c,x\n',
        {},
        None,
        ["a.csv:2: malformed record"],
    ),
    ("header only", "a.csv", "text,label\n", {}, None, ["a.csv: no data rows after the header"]),
    (
        "no text column",
        "a.csv",
        "review,label\nx,a\n",
        {},
        None,
        ["no text column 'text' (columns: review, label)", "data.text_column"],
    ),
    (
        "no label column",
        "a.csv",
        "text,sentiment\nx,a\n",
        {},
        None,
        ["no label column 'label'", "data.label_column"],
    ),
    (
        "no group column",
        "a.csv",
        GOOD_CSV,
        {"group_column": "movie"},
        None,
        ["no group column 'movie'", "data.group_column"],
    ),
    ("TSV read as CSV", "a.tsv", "text,label\nx,a\n", {}, None, ["no text column 'text'"]),
    ("JSONL not JSON", "a.jsonl", _jsonl(*GOOD_ROWS[:3], "{oops"), {}, None, ["a.jsonl:4"]),
    (
        "JSONL array line",
        "a.jsonl",
        _jsonl(GOOD_ROWS[0], "[1, 2]"),
        {},
        None,
        ["a.jsonl:2: expected a JSON object", "'[1, 2]'"],
    ),
    *[
        (
            f"JSONL text {kind}",
            "a.jsonl",
            _jsonl(*GOOD_ROWS[:2], {"label": "a", **({} if value is ... else {"text": value})}),
            {},
            None,
            ["a.jsonl:3: field 'text' (data.text_column) is", shown],
        )
        for kind, value, shown in [
            ("missing", ..., "missing"),
            ("null", None, "null"),
            ("number", 3.5, "a number: 3.5"),
            ("integer", 7, "an integer: 7"),
            ("boolean", True, "a boolean: true"),
            ("object", {"a": 1}, 'an object: {"a": 1}'),
            ("list", ["a"], 'an array: ["a"]'),
        ]
    ],
    (
        "JSONL lone surrogate in a text",
        "a.jsonl",
        _jsonl(GOOD_ROWS[0], '{"text": "bad \\ud800 text", "label": "a"}'),
        {},
        None,
        ["a.jsonl:2: field 'text'", "lone surrogate", "\\ud800"],
    ),
    (
        "JSONL label object",
        "a.jsonl",
        _jsonl(GOOD_ROWS[0], {"text": "x", "label": {"y": 1}}),
        {},
        None,
        ["a.jsonl:2: field 'label' (data.label_column) is an object"],
    ),
    (
        "JSONL labels 1 and '1'",
        "a.jsonl",
        _jsonl({"text": "x", "label": 1}, {"text": "y", "label": "1"}),
        {},
        None,
        ["mix JSON types", "integer 1 at", "a.jsonl:1", "string '1' at", "a.jsonl:2"],
    ),
    (
        "JSONL labels 1 and 1.0",
        "a.jsonl",
        _jsonl({"text": "x", "label": 1}, {"text": "y", "label": 1.0}),
        {},
        None,
        ["mix JSON types", "number 1.0"],
    ),
    (
        "JSONL labels true and 1",
        "a.jsonl",
        _jsonl({"text": "x", "label": True}, {"text": "y", "label": 1}),
        {},
        None,
        ["mix JSON types", "boolean true"],
    ),
    *[
        (
            f"label with {name}",
            "a.csv",
            f'text,label\nok,a\nx,"po{char}s"\n',
            {},
            None,
            [f"a.csv:3: label {('po' + char + 's')!r}", f"U+{ord(char):04X}", "data.label_column"],
        )
        for name, char in [
            ("zero-width space", "\u200b"),
            ("ESC", "\x1b"),
            ("NUL", "\x00"),
            ("newline inside", "\n"),
            ("byte-order mark inside", "\ufeff"),
            ("right-to-left mark", "\u200f"),
            ("private-use character", "\ue000"),
            ("line separator", "\u2028"),
        ]
    ],
    (
        "CoNLL tag with a zero-width space",
        "a.conll",
        "w1 O\nw2 B-PER\u200b\n",
        {},
        "token_classification",
        ["a.conll:2: tag 'B-PER\\u200b'", "U+200B"],
    ),
    (
        "CoNLL line with one column",
        "a.conll",
        "w1 O\nlonely\n",
        {},
        "token_classification",
        ["a.conll:2: expected a token and a tag column", "'lonely'"],
    ),
    (
        "CoNLL with only -DOCSTART-",
        "a.conll",
        "-DOCSTART- O\n\n",
        {},
        "token_classification",
        ["a.conll: no sentences found"],
    ),
    (
        "CSV for a token task",
        "a.csv",
        GOOD_CSV,
        {},
        "token_classification",
        ["token_classification needs a CoNLL column file", "data.format: conll"],
    ),
    ("CoNLL for a text task", "a.conll", CONLL_OK, {}, None, ["needs task: token_classification"]),
    (
        "group_column on CoNLL",
        "a.conll",
        CONLL_OK,
        {"group_column": "doc"},
        "token_classification",
        ["data.group_column: 'doc' cannot be used with CoNLL files"],
    ),
    (
        "every row a duplicate",
        "a.csv",
        "text,label\n" + "same,a\n" * 30,
        {},
        None,
        ["is empty", "30 rows, 29 removed as duplicates", "prepare.deduplicate: false"],
    ),
]


def _params(path: Path, data: dict, task: str | None) -> Params:
    return Params.model_validate(
        {"task": task or "text_classification", "data": {"source": {"path": str(path)}, **data}}
    )


@pytest.mark.parametrize(
    ("name", "content", "data", "task", "expected"),
    [pytest.param(f, c, d, t, e, id=i) for i, f, c, d, t, e in REFUSED],
)
def test_bad_file_is_refused_naming_file_line_field_and_value(
    tmp_path, name, content, data, task, expected
):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")
    with pytest.raises(StageError) as refused:
        prepare(_params(path, data, task), tmp_path / "out", tmp_path / "raw")
    message = str(refused.value)
    for fragment in expected:
        assert fragment in message, message
    assert not (tmp_path / "out" / "train.parquet").exists()  # nothing half-written


def test_missing_file_and_directory_are_refused(tmp_path):
    for path, expected in [
        (tmp_path / "nowhere.csv", "nowhere.csv: file not found (data.source)"),
        (tmp_path, "is a directory, expected a file (data.source)"),
    ]:
        with pytest.raises(StageError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            prepare(_params(path, {}, None), tmp_path / "out", tmp_path / "raw")


ACCEPTED = [
    ("BOM on the CSV header", "a.csv", "\ufeff" + GOOD_CSV, 40, 0),
    ("BOM on a JSONL file", "a.jsonl", "\ufeff" + _jsonl(*GOOD_ROWS), 40, 0),
    ("CRLF line ends", "a.csv", GOOD_CSV.replace("\n", "\r\n"), 40, 0),
    ("quoted newline inside a text", "a.csv", GOOD_CSV + '"two\nlines",a\n', 41, 0),
    ("label with surrounding spaces", "a.csv", GOOD_CSV + "extra, a \n", 41, 1),
    ("label in NFD form", "a.csv", GOOD_CSV.replace(",a\n", ",e\u0301\n"), 40, 20),
    ("JSONL unknown extra fields", "a.jsonl", _jsonl(*[{**r, "x": [1]} for r in GOOD_ROWS]), 40, 0),
    (
        "JSONL text with U+2028 inside",
        "a.jsonl",
        _jsonl(*GOOD_ROWS, {"text": "a\u2028b", "label": "a"}),
        41,
        0,
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "rows", "normalised"),
    [pytest.param(f, c, r, n, id=i) for i, f, c, r, n in ACCEPTED],
)
def test_documented_acceptance(tmp_path, name, content, rows, normalised):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8", newline="")
    summary = prepare(_params(path, {}, None), tmp_path / "out", tmp_path / "raw")
    assert summary["total_examples"] == rows
    assert summary["inputs"][0]["labels_normalised"] == normalised
    labels = set(pd.read_parquet(tmp_path / "out" / "train.parquet")["label"])
    assert labels <= {"a", "b", "é"}  # normalised labels are not extra classes
