"""The Great Expectations suites of the validate stage: each check's meaning, the expectations
of each split, and the train tables checked beside them (classes, shares, spellings)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from tasks.core.config import Params, ValidateParams
from tasks.core.data.rowkeys import row_keys
from tasks.core.validation.frames import Entities
from tasks.core.validation.gx import import_gx

# Python's \S as an explicit class: runs in Arrow (RE2), where \S would fall back to Python's
# re per text (peak memory: tests/test_memory.py); same verdict (tests/test_validate.py).
NOT_SPACE = "[^\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
COLUMNS = {  # required columns -> the Python type of their values ("group" is optional)
    "text_classification": {"text": "str", "label": "str"},
    "token_classification": {"tokens": "list", "tags": "list"},
}
SOURCE_COLUMNS = {"source_file": "str", "source_line": "int", "group": "str"}
CHECKS = {  # check name -> what it asserts (shown in the reports)
    "column_exists": "the required column is present",
    "column_type": "every value has the required Python type",
    "not_empty": "train has at least one row",
    "text_not_null": "the text (tokens) is not null",
    "text_not_blank": "the text (tokens) is not empty or whitespace only",
    "text_length": "length in characters (token task: in tokens) within bounds",
    "duplicate_share": "share of rows whose text repeats an earlier row of the same split",
    "leakage": "share of rows whose text (token task: joined tokens) also occurs in train",
    "label_not_null": "the label is not null",
    "label_allowed": "the label is one of validate.labels",
    "label_in_train": "the label occurs in train",
    "class_count": "train has at least two classes (labels; token task: entity types)",
    "class_share": "share of each label (token task: entity type, among entities) in train",
    "label_case": "no two labels (entity types) of any split differ only in letter case",
    "tokens_tags_same_length": "one tag per token",
    "tag_format": "every tag is O, B-X or I-X",
    "iob_sequence": "IOB2: no I-X at sentence start, after O or after another type",
    "entity_type_allowed": "entity types are in validate.labels",
    "entity_type_in_train": "entity types occur in train",
}


def _expect(check: str, cls: type, show: str | None = None, unit: str = "", **kw: Any) -> Any:
    """A GX expectation with the check's name, description and threshold in its meta
    (``show``: the user's column when a derived one is checked)."""
    if "mostly" in kw:
        threshold = f"<= {1 - kw['mostly']:.2%} of rows"
    elif "max_value" in kw:
        threshold = f"{kw['min_value']}..{kw['max_value']} {unit}".rstrip()
    elif "min_value" in kw:
        threshold = f">= {kw['min_value']:g}"
    elif "type_list" in kw:
        threshold = f"type {kw['type_list'][0]}"
    elif "value_set" in kw:
        threshold = f"one of {kw['value_set']}"
    else:
        threshold = "present" if check == "column_exists" else "no offending rows"
    column = kw.get("column")
    value = "key" if column in ("key", "duplicate_of", "in_train") else column
    if "column_A" in kw:
        column = f"{kw['column_A']}, {kw['column_B']}"
    meta = {"check": check, "description": CHECKS[check], "threshold": threshold}
    return cls(**kw, meta={**meta, "column": show or column, "value": value})


def suites(
    frames: dict[str, pd.DataFrame], params: Params, entities: dict[str, Entities | None]
) -> list[tuple[str, pd.DataFrame, list]]:
    """(split, frame, expectations) to run: one per split, plus the train class-share table."""
    ex = import_gx().expectations
    cfg, token = params.validate_, params.task == "token_classification"
    allowed = cfg.labels
    if token and allowed is not None:  # entity types; full tags (B-PER, O) are accepted too
        allowed = sorted({re.sub(r"^[BI]-", "", label) for label in allowed if label != "O"})
    train = frames["train"]
    seen = None
    if token and entities["train"] is not None:
        seen = sorted(entities["train"].pairs["type"].unique())
    elif not token and "label" in train:
        seen = sorted(train["label"].dropna().astype(str).unique())
    train_keys = row_keys(train["key"].dropna()) if "key" in train else None
    for split, frame in frames.items():  # derived columns that compare with train or params
        if split != "train" and "key" in frame and train_keys is not None:
            in_train = np.isin(row_keys(frame["key"]), train_keys)
            frame["in_train"] = frame["key"].notna().to_numpy() & in_train
        known = {"entity_type_allowed": allowed, "entity_type_in_train": seen}
        for check, types in known.items() if entities[split] is not None else ():
            if types is not None and not (split == "train" and check == "entity_type_in_train"):
                frame[check] = _unlisted(entities[split].pairs, len(frame), types)
    suites = [
        (split, frame, list(_split_expectations(ex, split, frame, params, allowed, seen)))
        for split, frame in frames.items()
    ]
    if seen is not None:
        present = pd.DataFrame({"class": seen})
        present.attrs["unit"] = "entity type" if token else "label"
        count = _expect("class_count", ex.ExpectTableRowCountToBeBetween, min_value=2)
        suites.append(("train", present, [count]))
        share = _expect(
            "class_share",
            ex.ExpectColumnValuesToBeBetween,
            column="share",
            min_value=cfg.min_class_share,
        )
        counts = entities["train"].counts if token else train["label"].dropna().astype(str)
        counts = counts if token else counts.value_counts()
        suites.append(("train", _class_shares(counts, allowed), [share]))
        case = _expect("label_case", ex.ExpectColumnValuesToBeNull, column="same_as")
        suites.append(("all", _spellings(frames, token, allowed, entities), [case]))
    return suites


def _unlisted(pairs: pd.DataFrame, rows: int, types: list[str]) -> np.ndarray:
    """Per row: its entity types missing from ``types`` (sorted, comma-separated), or None."""
    column = np.full(rows, None, dtype=object)
    missing = pairs[~pairs["type"].isin(types)]
    for row, found in missing.groupby("row", sort=False)["type"]:
        column[row] = ", ".join(sorted(found))
    return column


def _spellings(
    frames: dict[str, pd.DataFrame],
    token: bool,
    allowed: list[str] | None,
    entities: dict[str, Entities | None],
) -> pd.DataFrame:
    """One row per label (entity type) of any split: its rows and, where other labels differ
    from it only in letter case, those spellings (unless validate.labels lists them all)."""
    counts: Counter[str] = Counter()
    for split, frame in frames.items():
        if token and entities[split] is not None:  # the rows holding each type
            counts.update(entities[split].pairs["type"].value_counts().to_dict())
        elif not token and "label" in frame:
            counts.update(frame["label"].dropna().astype(str).value_counts().to_dict())
    classes = sorted(counts)
    folded: dict[str, list[str]] = {}
    for name in classes:
        folded.setdefault(name.casefold(), []).append(name)
    listed = set(allowed or [])
    same_as = []
    for name in classes:
        spellings = folded[name.casefold()]
        others = [s for s in spellings if s != name]
        kept_apart = set(spellings) <= listed  # validate.labels names every spelling
        same_as.append(", ".join(map(repr, others)) if others and not kept_apart else None)
    counted = [counts[name] for name in classes]
    return pd.DataFrame({"class": classes, "count": counted, "same_as": same_as}, dtype=object)


def _split_expectations(
    ex: Any,
    split: str,
    frame: pd.DataFrame,
    params: Params,
    allowed: list | None,
    seen: list | None,
) -> Iterator[Any]:
    """One split's expectations, for the columns (and derived columns) it has."""
    token = params.task == "token_classification"
    yield from _column_expectations(ex, frame, params)
    if split == "train":
        yield _expect("not_empty", ex.ExpectTableRowCountToBeBetween, min_value=1)
    yield from _text_expectations(ex, frame, params.validate_, token)
    if not token and "label" in frame:
        yield from _label_expectations(ex, split, allowed, seen)
    if token and "tags" in frame:
        yield from _tag_expectations(ex, frame)


def _column_expectations(ex: Any, frame: pd.DataFrame, params: Params) -> Iterator[Any]:
    """Each column of the task exists (but ``group``) and holds values of its type."""
    for column, type_ in {**COLUMNS[params.task], **SOURCE_COLUMNS}.items():
        if column != "group":
            yield _expect("column_exists", ex.ExpectColumnToExist, column=column)
        if column in frame:
            # Arrow strings pass as StringDtype; Arrow lists via their derived column
            types = [type_, "StringDtype"] if type_ == "str" else [type_]
            checked = f"{column}_type" if f"{column}_type" in frame else column
            yield _expect(
                "column_type",
                ex.ExpectColumnValuesToBeInTypeList,
                column if checked != column else None,
                column=checked,
                type_list=types,
            )


def _text_expectations(
    ex: Any, frame: pd.DataFrame, cfg: ValidateParams, token: bool
) -> Iterator[Any]:
    """The text (tokens): present, not blank, length, duplicates, leakage from train."""
    text, unit = ("tokens", "tokens") if token else ("text", "characters")
    if "key" in frame:
        bounds = {"min_value": cfg.min_text_length, "max_value": cfg.max_text_length}
        length = (
            ex.ExpectColumnValuesToBeBetween if token else ex.ExpectColumnValueLengthsToBeBetween
        )
        yield _expect("text_not_null", ex.ExpectColumnValuesToNotBeNull, column=text)
        yield _expect(
            "text_not_blank", ex.ExpectColumnValuesToMatchRegex, text, column="key", regex=NOT_SPACE
        )
        yield _expect(
            "text_length", length, text, unit, column=("n_tokens" if token else text), **bounds
        )
        yield _expect(
            "duplicate_share",
            ex.ExpectColumnValuesToBeNull,
            text,
            column="duplicate_of",
            mostly=1 - cfg.max_duplicate_share,
        )
    if "in_train" in frame:
        yield _expect(
            "leakage",
            ex.ExpectColumnValuesToNotBeInSet,
            text,
            column="in_train",
            value_set=[True],
            mostly=1 - cfg.max_leakage_share,
        )


def _label_expectations(
    ex: Any, split: str, allowed: list | None, seen: list | None
) -> Iterator[Any]:
    """Text task: every row has a label, an allowed one, and (outside train) one train has."""
    yield _expect("label_not_null", ex.ExpectColumnValuesToNotBeNull, column="label")
    if allowed is not None:
        yield _expect(
            "label_allowed", ex.ExpectColumnValuesToBeInSet, column="label", value_set=allowed
        )
    if split != "train" and seen is not None:
        yield _expect(
            "label_in_train", ex.ExpectColumnValuesToBeInSet, column="label", value_set=seen
        )


def _tag_expectations(ex: Any, frame: pd.DataFrame) -> Iterator[Any]:
    """Token task: one tag per token, IOB2 tags and sequences, allowed and known types."""
    if "tokens" in frame:
        yield _expect(
            "tokens_tags_same_length",
            ex.ExpectColumnPairValuesToBeEqual,
            column_A="n_tokens",
            column_B="n_tags",
        )
    yield _expect("tag_format", ex.ExpectColumnValuesToBeNull, "tags", column="bad_tag")
    yield _expect("iob_sequence", ex.ExpectColumnValuesToBeNull, "tags", column="iob_error")
    for check in ("entity_type_allowed", "entity_type_in_train"):
        if check in frame:
            yield _expect(check, ex.ExpectColumnValuesToBeNull, "tags", column=check)


def _class_shares(counts: pd.Series, allowed: list[str] | None) -> pd.DataFrame:
    """One row per class (allowed ones too) with its count and share in train."""
    counts = counts.reindex(sorted(set(counts.index) | set(allowed or [])), fill_value=0)
    shares = counts / max(int(counts.sum()), 1)
    # a plain RangeIndex: GX reports a named index as dicts
    return pd.DataFrame({"class": counts.index, "count": counts.values, "share": shares.values})
