"""Stage ``validate``: real Great Expectations on small crafted splits.

Each failure test breaks one thing in an otherwise clean data set and checks that exactly that
expectation fails, that the message names split, check and observed value, and that the report
lists the offending rows with their parquet row number and source line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from conftest import ROOT

from tasks.core.config import load_params
from tasks.core.errors import StageError
from tasks.core.validation.expectations import NOT_SPACE
from tasks.core.validation.report import ValidationReport
from tasks.validate import validate

SOURCE = "data/external/reviews.csv"
BASE_LINE = {"train": 2, "validation": 1002, "test": 2002}  # source line of each split's row 0
SENTENCES = [
    (["Alice", "visited", "Paris"], ["B-PER", "O", "B-LOC"]),
    (["ACME", "Corp", "hired", "Bob", "Smith"], ["B-ORG", "I-ORG", "O", "B-PER", "I-PER"]),
]


def text_splits(n_train: int = 100, n_eval: int = 20) -> dict[str, pd.DataFrame]:
    """Clean text-classification splits: unique texts, balanced labels, no leakage."""
    frames = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        frames[split] = pd.DataFrame(
            {
                "text": [f"{split} review {i}: a film worth talking about" for i in range(n)],
                "label": ["positive", "negative"] * (n // 2),
                "source_file": SOURCE,
                "source_line": [BASE_LINE[split] + i for i in range(n)],
            }
        )
    return frames


def token_splits(n_train: int = 40, n_eval: int = 10) -> dict[str, pd.DataFrame]:
    """Clean token-classification splits; ``source_line`` is each sentence's first line."""
    frames = {}
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        rows = [SENTENCES[i % 2] for i in range(n)]
        frames[split] = pd.DataFrame(
            {
                "tokens": [[*tokens, f"#{split}{i}"] for i, (tokens, _) in enumerate(rows)],
                "tags": [[*tags, "O"] for _, tags in rows],
                "source_file": "data/external/ner.conll",
                "source_line": [BASE_LINE[split] + 10 * i for i in range(n)],
            }
        )
    return frames


def write_case(root: Path, frames: dict[str, pd.DataFrame], task: str = "text", **validate_params):
    """Write the splits to ``root/data/prepared`` and a tweaked copy of params.yaml."""
    prepared = root / "data" / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    for split, frame in frames.items():
        frame.to_parquet(prepared / f"{split}.parquet", index=False)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if task == "token":
        raw["task"], raw["data"]["source"] = "token_classification", "wnut16"
    raw["validate"].update(validate_params)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def run_case(root: Path, frames, task: str = "text", **validate_params) -> ValidationReport:
    """Run the stage in-process on a crafted case."""
    write_case(root, frames, task, **validate_params)
    params = load_params(root / "params.yaml")
    return validate(params, root / "data" / "prepared", root / "reports")


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m tasks.validate`` on ``root``'s files (the defaults are the checkout's own
    paths; ``args`` given later win)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    here = ["--prepared-dir", "data/prepared", "--reports-dir", "reports"]
    here += ["--params", "params.yaml"]
    cmd = [sys.executable, "-m", "tasks.validate", *here, *args]
    return subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def failed(report: ValidationReport) -> set[tuple[str, str]]:
    return {(r.split, r.check) for r in report.failed}


def only_failure(report: ValidationReport, split: str, check: str):
    """Assert that exactly (split, check) failed and return its result."""
    assert failed(report) == {(split, check)}, report.failure_message()
    result = report.failed[0]
    message = report.failure_message()
    assert f"  {split}: {check} ({result.expectation}" in message
    assert f"observed {result.observed}" in message
    return result


def rows_of(result) -> list[tuple[int, str, int, object]]:
    return [
        (r["row"], r["source_file"], r["source_line"], r["value"]) for r in result.offending_rows
    ]


# --- passing cases ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passing_text_cli(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """Clean text splits validated through the CLI, as DVC runs it."""
    root = tmp_path_factory.mktemp("pass_text")
    write_case(root, text_splits())
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.parquet")}
    done = run_cli(root)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.parquet")}
    assert after == digests, "validate must not modify data/"
    return root, done, json.loads((root / "reports" / "validation.json").read_text())


def test_text_passes_through_cli(passing_text_cli):
    root, done, report = passing_text_cli
    assert done.returncode == 0, done.stderr
    assert "validation passed:" in done.stderr and "100/20/20" in done.stderr
    assert report["success"] is True and report["failed"] == 0
    assert report["task"] == "text_classification"
    assert report["rows"] == {"train": 100, "validation": 20, "test": 20}
    checks = {(e["split"], e["check"]) for e in report["expectations"]}
    assert {
        ("validation", "leakage"),
        ("test", "label_in_train"),
        ("train", "class_share"),
    } <= checks
    assert (root / "reports" / "validation.md").read_text().startswith("# Data validation: passed")
    umask = os.umask(0)
    os.umask(umask)
    for name in ("validation.json", "validation.md"):  # usual permissions, not mkstemp's 0600
        assert stat.S_IMODE((root / "reports" / name).stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in (root / "reports").iterdir()) == [
        "validation.json",
        "validation.md",
    ]
    assert sorted(p.name for p in (root / "data").rglob("*")) == [
        "prepared",
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]


def test_token_passes(tmp_path):
    report = run_case(tmp_path, token_splits(), task="token")
    assert report.success, report.failure_message()
    checks = {r.check for r in report.results}
    assert {
        "tokens_tags_same_length",
        "tag_format",
        "iob_sequence",
        "entity_type_in_train",
    } <= checks
    assert json.loads(report.json_path.read_text())["success"] is True


def test_report_entries_have_the_documented_fields(passing_text_cli):
    entry = passing_text_cli[2]["expectations"][0]
    assert set(entry) >= {
        "split",
        "check",
        "expectation",
        "description",
        "success",
        "observed",
        "observed_value",
        "threshold",
        "offending_rows",
    }


# --- failing cases: text classification ----------------------------------------------------


def test_null_text(tmp_path):
    frames = text_splits()
    frames["validation"].loc[3, "text"] = None
    result = only_failure(run_case(tmp_path, frames), "validation", "text_not_null")
    assert result.observed == "1 of 20 rows (5.00%)"
    assert rows_of(result) == [(3, SOURCE, 1005, None)]


def test_blank_text(tmp_path):
    frames = text_splits()
    frames["test"].loc[7, "text"] = "  \t "
    result = only_failure(run_case(tmp_path, frames), "test", "text_not_blank")
    assert result.expectation == "expect_column_values_to_match_regex"
    assert rows_of(result) == [(7, SOURCE, 2009, "  \t ")]


def test_offending_rows_keep_their_position_across_parquet_row_groups(tmp_path):
    # validate joins each column's row groups into one Arrow chunk (memory): row numbers and
    # values must come out as from a file of one row group.
    frames = text_splits()
    frames["test"].loc[7, "text"] = "  \t "
    frames["test"].loc[15, "text"] = "\u3000\x0b"
    write_case(tmp_path, frames)
    prepared = tmp_path / "data" / "prepared" / "test.parquet"
    frames["test"].to_parquet(prepared, index=False, row_group_size=3)
    params = load_params(tmp_path / "params.yaml")
    result = only_failure(
        validate(params, prepared.parent, tmp_path / "reports"), "test", "text_not_blank"
    )
    assert rows_of(result) == [(7, SOURCE, 2009, "  \t "), (15, SOURCE, 2017, "\u3000\x0b")]


def test_not_blank_class_gives_python_verdict_on_every_code_point():
    # text_not_blank matches NOT_SPACE (Arrow's RE2) in place of Python's \S.
    chars = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    texts = pd.Series(chars, dtype=pd.StringDtype()).astype(str)  # as GX reads the column
    found = texts.str.contains(NOT_SPACE).to_numpy()
    expected = np.array([re.search(r"\S", c) is not None for c in chars])
    assert found.dtype == bool and (found == expected).all()


def test_validate_gives_back_the_arrow_memory_pool(tmp_path):
    before = pa.default_memory_pool().backend_name
    run_case(tmp_path, text_splits())
    assert pa.default_memory_pool().backend_name == before


def test_validation_label_unseen_in_train(tmp_path):
    frames = text_splits()
    frames["validation"].loc[5, "label"] = "neutral"
    report = run_case(tmp_path, frames)
    result = only_failure(report, "validation", "label_in_train")
    assert "observed 1 of 20 rows (5.00%)" in report.failure_message()
    assert "expected one of ['negative', 'positive']" in report.failure_message()
    assert rows_of(result) == [(5, SOURCE, 1007, "neutral")]


def test_label_not_in_params_labels(tmp_path):
    frames = text_splits()
    frames["train"].loc[[10, 11], "label"] = "mixed"
    report = run_case(tmp_path, frames, labels=["negative", "positive"])
    result = only_failure(report, "train", "label_allowed")
    assert result.observed == "2 of 100 rows (2.00%)"
    assert rows_of(result) == [(10, SOURCE, 12, "mixed"), (11, SOURCE, 13, "mixed")]


def test_a_long_review_passes_by_default(tmp_path):
    """Ordinary review corpora hold reviews of 13,000 characters (IMDB): tokenize truncates
    them, so the gate has no upper bound unless validate.max_text_length sets one."""
    frames = text_splits()
    frames["train"].loc[3, "text"] = "a long and winding review " * 500  # 13,000 characters
    report = run_case(tmp_path, frames)
    assert report.success, report.failure_message()


def test_text_too_long(tmp_path):
    frames = text_splits()
    frames["validation"].loc[4, "text"] = "x" * 300
    result = only_failure(
        run_case(tmp_path, frames, max_text_length=100), "validation", "text_length"
    )
    assert result.threshold == "1..100 characters"
    [(row, source, line, value)] = rows_of(result)
    assert (row, source, line) == (4, SOURCE, 1006)
    assert value.startswith("x" * 200) and value.endswith("(300 characters)")


def test_duplicate_share_above_threshold(tmp_path):
    frames = text_splits()
    train = frames["train"]
    train.loc[90:99, "text"] = train.loc[0, "text"]  # 10 copies of row 0: share 10% > 5%
    report = run_case(tmp_path, frames, max_offending_rows=3)
    result = only_failure(report, "train", "duplicate_share")
    assert result.observed == "10 of 100 rows (10.00%)"
    assert result.threshold == "<= 5.00% of rows"
    assert result.unexpected_count == 10
    text = train.loc[0, "text"]
    assert rows_of(result) == [
        (90, SOURCE, 92, text),
        (91, SOURCE, 93, text),
        (92, SOURCE, 94, text),
    ]
    saved = json.loads(report.json_path.read_text())
    assert saved["expectations"][0]["check"] == "duplicate_share"  # failed ones come first
    assert [r["row"] for r in saved["expectations"][0]["offending_rows"]] == [90, 91, 92]
    markdown = report.markdown_path.read_text()
    assert "### train: duplicate_share" in markdown and "(first 3 of 10 shown)" in markdown
    assert markdown.index("## Failed expectations") < markdown.index("## All expectations")


def test_train_test_leakage_above_threshold(tmp_path):
    frames = text_splits()
    frames["test"].loc[[2, 6], "text"] = frames["train"].loc[[40, 41], "text"].to_numpy()
    report = run_case(tmp_path, frames)
    result = only_failure(report, "test", "leakage")
    assert result.observed == "2 of 20 rows (10.00%)" and result.threshold == "<= 1.00% of rows"
    assert [r[:3] for r in rows_of(result)] == [(2, SOURCE, 2004), (6, SOURCE, 2008)]
    assert rows_of(result)[0][3] == frames["train"].loc[40, "text"]


def test_leakage_within_threshold_passes(tmp_path):
    frames = text_splits()
    frames["test"].loc[2, "text"] = frames["train"].loc[40, "text"]  # 5% leaked, 10% allowed
    assert run_case(tmp_path, frames, max_leakage_share=0.1).success


def test_class_below_min_share(tmp_path):
    frames = text_splits()
    frames["train"].loc[[1, 3, 5], "label"] = "neutral"  # 3% of train
    report = run_case(tmp_path, frames, min_class_share=0.05)
    result = only_failure(report, "train", "class_share")
    assert result.observed == "1 of 3 classes (33.33%)"
    assert result.offending_rows == [{"class": "neutral", "count": 3, "share": 0.03}]
    assert "e.g. neutral 3.00% (3)" in report.failure_message()


def test_missing_column(tmp_path):
    frames = text_splits()
    frames["validation"] = frames["validation"].drop(columns="label")
    report = run_case(tmp_path, frames)
    result = only_failure(report, "validation", "column_exists")
    assert result.column == "label"
    assert result.observed == "missing (columns: text, source_file, source_line)"


def test_missing_prepared_file(tmp_path):
    frames = text_splits()
    del frames["test"]
    with pytest.raises(StageError, match=r"test\.parquet: prepared split not found.*'prepare'"):
        run_case(tmp_path, frames)
    assert not (tmp_path / "reports").exists()


def test_failure_through_cli(tmp_path):
    frames = text_splits()
    frames["validation"].loc[5, "label"] = "neutral"
    write_case(tmp_path, frames)
    done = run_cli(tmp_path, "--reports-dir", "out", "--params", "params.yaml")
    assert done.returncode == 1
    assert done.stderr.startswith("validate: error: validation failed: 1 of ")
    assert (
        "  validation: label_in_train (expect_column_values_to_be_in_set on label): "
        "observed 1 of 20 rows (5.00%), expected one of ['negative', 'positive']; "
        f'e.g. row 5 ({SOURCE}:1007) "neutral"'
    ) in done.stderr
    assert "report: out/validation.md" in done.stderr
    assert json.loads((tmp_path / "out" / "validation.json").read_text())["success"] is False
    assert "Traceback" not in done.stderr


def test_cli_missing_prepared_dir(tmp_path):
    write_case(tmp_path, {})
    done = run_cli(tmp_path, "--prepared-dir", "nowhere")
    assert done.returncode == 1
    assert "validate: error: nowhere/train.parquet: prepared split not found" in done.stderr


# --- failing cases: token classification ---------------------------------------------------


def test_tokens_tags_length_mismatch(tmp_path):
    frames = token_splits()
    frames["validation"].at[2, "tags"] = ["B-PER", "O", "B-LOC"]  # 4 tokens, 3 tags
    report = run_case(tmp_path, frames, task="token")
    result = only_failure(report, "validation", "tokens_tags_same_length")
    assert result.observed == "1 of 10 sentences (10.00%)"
    assert rows_of(result) == [(2, "data/external/ner.conll", 1022, "n_tokens=4, n_tags=3")]


@pytest.mark.parametrize(
    ("tags", "error"),
    [
        (["B-PER", "O", "I-LOC", "O"], "token 3: I-LOC after O"),
        (["B-PER", "I-LOC", "B-LOC", "O"], "token 2: I-LOC after B-PER"),
        (["I-PER", "O", "B-LOC", "O"], "token 1: I-PER at sentence start"),
    ],
    ids=["after-O", "after-other-type", "at-start"],
)
def test_invalid_iob_sequence(tmp_path, tags, error):
    frames = token_splits()
    frames["train"].at[6, "tags"] = tags
    result = only_failure(run_case(tmp_path, frames, task="token"), "train", "iob_sequence")
    assert rows_of(result) == [(6, "data/external/ner.conll", 62, error)]


def test_tag_not_iob_form(tmp_path):
    frames = token_splits()
    frames["test"].at[4, "tags"] = ["B-PER", "O", "PER", "O"]
    result = only_failure(run_case(tmp_path, frames, task="token"), "test", "tag_format")
    assert rows_of(result) == [(4, "data/external/ner.conll", 2042, "token 3: 'PER'")]


def test_test_entity_type_not_in_train(tmp_path):
    frames = token_splits()
    frames["test"].at[8, "tags"] = ["B-MISC", "O", "B-LOC", "O"]
    report = run_case(tmp_path, frames, task="token")
    result = only_failure(report, "test", "entity_type_in_train")
    assert rows_of(result) == [(8, "data/external/ner.conll", 2082, "MISC")]
    assert 'e.g. row 8 (data/external/ner.conll:2082) "MISC"' in report.failure_message()


def test_entity_type_below_min_share(tmp_path):
    frames = token_splits()
    frames["train"].at[0, "tags"] = ["B-PER", "O", "B-MISC", "O"]  # 1 of 80 entities
    report = run_case(tmp_path, frames, task="token", min_class_share=0.05)
    result = only_failure(report, "train", "class_share")
    assert [r["class"] for r in result.offending_rows] == ["MISC"]


# --- data that cannot train a sensible model; every failure names its way out -------------


def test_single_class_is_refused(tmp_path):
    frames = text_splits()
    for frame in frames.values():
        frame["label"] = "positive"
    report = run_case(tmp_path, frames)
    result = only_failure(report, "train", "class_count")
    assert result.observed == "1 label in train: 'positive'"
    assert result.observed_value == ["positive"]
    message = report.failure_message()
    assert "observed 1 label in train: 'positive', expected >= 2" in message
    assert "    no key relaxes it: a classifier needs at least two classes in train" in message


def test_single_entity_type_is_refused(tmp_path):
    frames = token_splits()
    for frame in frames.values():
        frame["tags"] = frame["tags"].map(lambda tags: [t if "PER" in t else "O" for t in tags])
    result = only_failure(run_case(tmp_path, frames, task="token"), "train", "class_count")
    assert result.observed == "1 entity type in train: 'PER'"


def test_labels_differing_only_in_case_are_reported(tmp_path):
    frames = text_splits()
    frames["train"].loc[[0, 2], "label"] = "Positive"  # 2% of train: class_share passes
    report = run_case(tmp_path / "mixed", frames)
    result = only_failure(report, "all", "label_case")
    assert result.offending_rows == [
        {"class": "Positive", "count": 2, "same_as": "'positive'"},
        {"class": "positive", "count": 68, "same_as": "'Positive'"},
    ]
    message = report.failure_message()
    assert "e.g. 'Positive' (2 rows) differs only in case from 'positive'" in message
    assert "    relax with validate.labels = null: list every spelling there" in message
    # Both spellings listed in validate.labels: two classes on purpose.
    labels = ["negative", "positive", "Positive"]
    assert run_case(tmp_path / "listed", frames, labels=labels).success


def test_invisible_characters_are_escaped_in_messages_and_reports(tmp_path):
    frames = text_splits()
    frames["validation"].loc[5, "label"] = "neu\u200btral"
    report = run_case(tmp_path, frames)
    only_failure(report, "validation", "label_in_train")
    message = report.failure_message()
    assert f'e.g. row 5 ({SOURCE}:1007) "neu\\u200btral"' in message
    assert "    no key relaxes it: a model cannot learn a class absent from train" in message
    assert message.replace("\n", "").isprintable()
    assert '| 5 | data/external/reviews.csv | 1007 | "neu\\u200btral" |' in (
        report.markdown_path.read_text()
    )


@pytest.mark.parametrize(
    ("case", "params", "remedy"),
    [
        (
            "long",
            {"max_text_length": 100},
            "1 row(s) longer than validate.max_text_length = 100 (characters): raising it is "
            "safe, tokenize truncates every example at tokenize.max_length sub-tokens",
        ),
        (
            "short",
            {"min_text_length": 10},
            "1 row(s) shorter than validate.min_text_length = 10 (characters): lower it",
        ),
        ("leak", {}, "relax with validate.max_leakage_share = 0.01 (the share of validation"),
        ("duplicates", {}, "relax with validate.max_duplicate_share = 0.05 (the share of a"),
        ("rare", {"min_class_share": 0.05}, "relax with validate.min_class_share = 0.05 (the"),
        ("unlisted", {"labels": ["negative", "positive"]}, "relax with validate.labels = ["),
    ],
    ids=["long", "short", "leak", "duplicates", "rare", "unlisted"],
)
def test_failures_name_the_key_that_relaxes_them(tmp_path, case, params, remedy):
    frames = text_splits()
    train, test = frames["train"], frames["test"]
    if case == "long":
        test.loc[4, "text"] = "x" * 300
    elif case == "short":
        test.loc[4, "text"] = "short"
    elif case == "leak":
        test.loc[[2, 6], "text"] = train.loc[[40, 41], "text"].to_numpy()
    elif case == "duplicates":
        train.loc[90:99, "text"] = train.loc[0, "text"]
    else:
        train.loc[[1, 3, 5], "label"] = "neutral"
    report = run_case(tmp_path, frames, **params)
    assert len(report.failed) == 1, report.failure_message()
    assert report.failed[0].remedy.startswith(remedy)
    assert f"\n    {remedy}" in report.failure_message()
    saved = json.loads(report.json_path.read_text())["expectations"][0]
    assert saved["remedy"].startswith(remedy)
    assert f"To pass: {remedy}" in report.markdown_path.read_text()


def test_clean_user_file_passes_prepare_and_validate(tmp_path):
    """A file with a byte-order mark and padded labels: read, normalised, validated."""
    from tasks.prepare import prepare

    source = tmp_path / "reviews.csv"
    rows = [f"review {i}: worth a look,{' good ' if i % 2 else 'bad'}" for i in range(200)]
    source.write_bytes("\n".join(["\ufeffreview,stars", *rows, ""]).encode("utf-8"))
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"].update(source={"path": str(source)}, text_column="review", label_column="stars")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(tmp_path / "params.yaml")
    summary = prepare(params, tmp_path / "data" / "prepared", tmp_path / "data" / "raw")
    assert summary["splits"]["train"]["labels"] == {"bad": 80, "good": 80}
    report = validate(params, tmp_path / "data" / "prepared", tmp_path / "reports")
    assert report.success, report.failure_message()
