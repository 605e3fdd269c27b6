"""The prepared splits as pandas frames for Great Expectations (strings and lists of strings
kept in Arrow), with the derived columns some expectations check."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.core.data.rowkeys import first_rows, row_keys
from tasks.core.errors import StageError

TAG_RE = re.compile(r"^(O|[BI]-\S+)$")


def load(path: Path, token: bool) -> pd.DataFrame:
    if not path.is_file():
        raise StageError(
            f"{path}: prepared split not found; run the 'prepare' stage first "
            "(python -m tasks.prepare, or dvc repro prepare)"
        )
    try:
        frame = _read_lists(path) if token else pd.read_parquet(path)
        frame = frame.reset_index(drop=True)
    except Exception as exc:
        raise StageError(f"{path}: cannot read the parquet file: {exc}") from None
    columns = list(frame.columns)
    # GX checks the dtype of a non-object column: strings stay in Arrow (GX type
    # "StringDtype"), int64 as is; the rest become object, checked value by value.
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.ArrowDtype):
            frame[column] = _string_lists(frame[column])
        elif pd.api.types.is_string_dtype(frame[column]) and frame[column].dtype != object:
            frame[column] = _one_chunk(frame[column].astype(pd.StringDtype()))
        elif frame[column].dtype != "int64":
            frame[column] = frame[column].astype(object)
    for column in ("tokens", "tags") if token else ():
        if frame.get(column, pd.Series()).dtype == object:  # numpy arrays or lists
            frame[column] = frame[column].map(
                lambda v: list(v) if hasattr(v, "__len__") and not isinstance(v, str) else v
            )
    frame.attrs["columns"] = columns
    return frame


def _one_chunk(column: pd.Series) -> pd.Series:
    """An Arrow string column in one contiguous chunk, made once before GX runs (Arrow's
    ``take`` concatenates chunks on every row selection: peak memory, tests/test_memory.py)."""
    chunks = pa.chunked_array(pa.array(column.array)).combine_chunks()
    return pd.Series(pd.arrays.ArrowStringArray(chunks), index=column.index, name=column.name)


def _read_lists(path: Path) -> pd.DataFrame:
    """A parquet file with list-of-strings columns as Arrow list columns, each made one chunk
    before the next is read (never every list twice at once)."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    columns = []
    for name in schema.names:
        column = parquet.read(columns=[name]).column(0)
        columns.append(column.combine_chunks() if _list_type(column.type) else column)
    table = pa.Table.from_arrays(columns, schema=schema)
    return table.to_pandas(types_mapper=_list_type)


def _list_type(arrow_type: pa.DataType) -> pd.ArrowDtype | None:
    """``pd.ArrowDtype`` for a list of strings, else None (the default conversion)."""
    lists = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    if lists and arrow_type.value_type in (pa.string(), pa.large_string()):
        return pd.ArrowDtype(arrow_type)
    return None


def _string_lists(column: pd.Series) -> pd.Series:
    """An Arrow list-of-strings column in one chunk; Python lists if an item is null.
    Hand-written: Python lists of strings cost far more memory (bench/memory.py --format
    conll)."""
    lists = column.array.__arrow_array__().combine_chunks()
    if pc.list_flatten(lists).null_count:
        return pd.Series(lists.to_pylist(), index=column.index, name=column.name, dtype=object)
    return pd.Series(pd.arrays.ArrowExtensionArray(lists), index=column.index, name=column.name)


def _arrow_lists(column: pd.Series) -> pa.Array | None:
    """The Arrow list array of a column kept in Arrow by :func:`_string_lists`, else None."""
    if isinstance(column.dtype, pd.ArrowDtype):
        return column.array.__arrow_array__().combine_chunks()
    return None


@dataclass
class Entities:
    """A split's (row, entity type) pairs and the count of entities (B- tags) per type."""

    pairs: pd.DataFrame
    counts: pd.Series


def derive(frame: pd.DataFrame, token: bool) -> tuple[pd.DataFrame, Entities | None]:
    """Add the derived columns some expectations check; return the frame and its entity
    types (token frames with tags)."""
    entities = None
    if not token and "text" in frame:
        frame["key"] = frame["text"]
    if token and "tokens" in frame:
        lists = _arrow_lists(frame["tokens"])
        if lists is not None:
            joined = pd.Series(pd.array(pc.binary_join(lists, " "), dtype="str"))
            frame["key"] = _one_chunk(joined)
            frame["n_tokens"] = _lengths(lists)
        else:
            tokens = frame["tokens"].map(lambda v: v if isinstance(v, list) else None)
            frame["key"] = tokens.map(lambda v: None if v is None else " ".join(map(str, v)))
            frame["n_tokens"] = tokens.map(lambda v: None if v is None else len(v))
            frame["n_tokens"] = frame["n_tokens"].astype("Int64")
    if token and "tags" in frame:
        lists = _arrow_lists(frame["tags"])
        judge = _python_derived if lists is None else _arrow_derived
        entities = judge(frame, lists)
    for column in ("tokens", "tags"):
        if token and column in frame and isinstance(frame[column].dtype, pd.ArrowDtype):
            # one shared empty list per row for the column_type check, not every sentence
            kinds = np.empty(len(frame), dtype=object)
            kinds.fill([])
            kinds[frame[column].isna().to_numpy()] = None
            frame[f"{column}_type"] = kinds
    if "key" in frame:  # duplicate_of: the row where this row's text first occurs, or None
        first, _ = first_rows(row_keys(frame["key"]))
        repeats = np.flatnonzero((first != np.arange(len(frame))) & frame["key"].notna())
        duplicate_of = np.full(len(frame), None, dtype=object)
        duplicate_of[repeats] = first[repeats].tolist()
        frame["duplicate_of"] = duplicate_of
    return frame, entities


def _lengths(lists: pa.Array) -> pd.Series:
    """The length of each list (null for a null list), as Int64."""
    lengths = pc.list_value_length(lists).cast(pa.int64())
    return pd.Series(pd.arrays.ArrowExtensionArray(lengths)).astype("Int64")


def _python_derived(frame: pd.DataFrame, _: None) -> Entities:
    """The tag checks' columns from tags held as Python lists."""
    tags = frame["tags"].map(lambda v: v if isinstance(v, list) else [])
    frame["n_tags"] = frame["tags"].map(lambda v: len(v) if isinstance(v, list) else None)
    frame["n_tags"] = frame["n_tags"].astype("Int64")
    frame["bad_tag"] = tags.map(_bad_tag)
    frame["iob_error"] = tags.map(_iob_error)
    rows, types, counts = [], [], Counter()
    for row, values in enumerate(tags):
        found = sorted({t[2:] for t in values if _is_tag(t) and t != "O"})
        rows += [row] * len(found)
        types += found
        counts.update(t[2:] for t in values if _is_tag(t) and t.startswith("B-"))
    return Entities(pd.DataFrame({"row": rows, "type": types}), pd.Series(counts, dtype=int))


# Sentences whose tags are judged at once, bounding the per-tag arrays (bench/memory.py).
TAG_ROWS = 65_536


def _arrow_derived(frame: pd.DataFrame, lists: pa.Array) -> Entities:
    """:func:`_python_derived` for an Arrow list<string> column: distinct tags judged once,
    TAG_ROWS sentences at a time; only offending sentences become Python lists."""
    names = pc.unique(pc.list_flatten(lists))
    tags = names.to_pylist() or ["O"]  # (no tags at all: one name, never used)
    valid = np.array([_is_tag(t) for t in tags], dtype=bool)
    types = sorted({t[2:] for t, ok in zip(tags, valid, strict=True) if ok and t != "O"})
    number = {name: k for k, name in enumerate(types, 1)}  # 0: O (or not a tag)
    kinds = _TagKinds(
        valid=valid,
        type_of=np.array(
            [
                number.get(t[2:], 0) if ok and t != "O" else 0
                for t, ok in zip(tags, valid, strict=True)
            ],
            dtype=np.int32,
        ),
        inside=np.array([t.startswith("I-") for t in tags]) & valid,
        begins=np.array([t.startswith("B-") for t in tags]) & valid,
    )
    bad, wrong, pairs = [], [], []
    started = np.zeros(len(types) + 1, dtype=np.int64)
    for start in range(0, len(lists), TAG_ROWS):
        part = _judged(lists.slice(start, TAG_ROWS), names, kinds)
        bad.append(part["bad"] + start)
        wrong.append(part["wrong"] + start)
        pairs.append(part["pairs"] + np.array([start, 0]))
        started += np.bincount(part["started"], minlength=len(types) + 1)
    frame["n_tags"] = _lengths(lists)
    frame["bad_tag"] = _messages(len(frame), np.concatenate([[], *bad]), lists, _bad_tag)
    frame["iob_error"] = _messages(len(frame), np.concatenate([[], *wrong]), lists, _iob_error)
    found = np.concatenate([np.empty((0, 2), dtype=np.int64), *pairs])
    named = np.array(["", *types], dtype=object)
    table = pd.DataFrame({"row": found[:, 0], "type": named[found[:, 1]]})
    counts = pd.Series(started[1:], index=types, dtype=int)
    return Entities(table, counts[counts > 0])


@dataclass
class _TagKinds:
    """Per distinct tag: a valid tag, its entity type's number (0: O), I- tag, B- tag."""

    valid: np.ndarray
    type_of: np.ndarray
    inside: np.ndarray
    begins: np.ndarray


def _judged(lists: pa.Array, names: pa.Array, kinds: _TagKinds) -> dict[str, np.ndarray]:
    """Rows with a refused tag, rows with an IOB2 error, (row, type) pairs, B- tag types."""
    values = pc.list_flatten(lists)
    ends = lists.offsets.to_numpy()[1:] - lists.offsets[0].as_py()  # (a slice: shifted)
    codes = pc.index_in(values, value_set=names).to_numpy(zero_copy_only=False)
    valid = kinds.valid[codes]
    bad = np.unique(np.searchsorted(ends, np.flatnonzero(~valid), side="right"))
    # IOB2: an I-X whose previous valid tag in the sentence (O at its start) is of another type.
    codes = codes[valid]
    row = np.searchsorted(ends, np.flatnonzero(valid), side="right")
    kind = kinds.type_of[codes]
    previous = np.zeros_like(kind)
    previous[1:] = kind[:-1]
    previous[np.r_[True, row[1:] != row[:-1]][: len(row)]] = 0  # a sentence's first valid tag
    wrong = np.unique(row[kinds.inside[codes] & (previous != kind)])
    typed = kind > 0
    pairs = np.unique(np.stack([row[typed], kind[typed]], axis=1), axis=0)
    return {"bad": bad, "wrong": wrong, "pairs": pairs, "started": kind[kinds.begins[codes]]}


def _messages(rows: int, offending: np.ndarray, lists: pa.Array, message: Any) -> np.ndarray:
    """``message(tags)`` for the ``offending`` rows, None elsewhere."""
    column = np.full(rows, None, dtype=object)
    for row in offending.astype(np.int64).tolist():
        column[row] = message(lists[row].as_py())
    return column


def _is_tag(tag: Any) -> bool:
    return isinstance(tag, str) and TAG_RE.match(tag) is not None


def _bad_tag(tags: list[Any]) -> str | None:
    return ", ".join(f"token {i}: {t!r}" for i, t in enumerate(tags, 1) if not _is_tag(t)) or None


def _iob_error(tags: list[Any]) -> str | None:
    """The first IOB2 violation: ``I-X`` at sentence start, after ``O`` or after another type."""
    previous = "O"
    for i, tag in enumerate(tags, 1):
        if not _is_tag(tag):
            continue  # the tag_format check reports it
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            return f"token {i}: {tag} " + ("at sentence start" if i == 1 else f"after {previous}")
        previous = tag
    return None
