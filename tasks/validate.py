"""Stage ``validate``: the data-quality gate between ``prepare`` and ``tokenize``.

Every verdict comes from a built-in Great Expectations 1.x expectation. Checks that need a
derived value (token counts, IOB errors, duplicates, per-class shares) validate a column or
table computed here with pandas. Writes ``validation.json`` and ``validation.md`` to the
reports folder; a failed gate exits non-zero. Files under ``data/`` are only read. Every
failure carries its ``remedy``: the ``validate`` key that relaxes it with its current value
(``validate.max_leakage_share = 0.01``), or why no key does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from tasks.core.cli import stage_command
from tasks.core.config import Params, load_params
from tasks.core.errors import StageError
from tasks.core.rowkeys import first_rows, row_keys

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
TAG_RE = re.compile(r"^(O|[BI]-\S+)$")
# Python's \S spelled as the class of what it excludes, the characters str.isspace()
# accepts. pandas runs a pattern with \s or \S through Python's re, one Python object per
# text (RE2's \s misses "\x0b"): +0.4 to 0.7x the file in peak memory (tests/test_memory.py).
# This class runs in Arrow (RE2) with the same verdict on every code point
# (tests/test_validate.py).
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


@dataclass
class CheckResult:
    """One expectation's outcome, with up to ``max_offending_rows`` offending rows."""

    split: str
    check: str
    expectation: str
    column: str | None
    description: str
    success: bool
    observed: str
    threshold: str
    observed_value: Any = None
    unexpected_count: int = 0
    offending_rows: list[dict[str, Any]] = field(default_factory=list)
    # A failure's way out: the params key that relaxes it and its value, or why none does.
    remedy: str = ""


@dataclass
class ValidationReport:
    """All results of one run; ``success`` is the gate's verdict."""

    success: bool
    task: str
    rows: dict[str, int]
    results: list[CheckResult]
    json_path: Path
    markdown_path: Path

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]

    def to_dict(self) -> dict[str, Any]:
        """The JSON report; failed expectations first."""
        ordered = self.failed + [r for r in self.results if r.success]
        return {
            **{"success": self.success, "task": self.task, "rows": self.rows},
            **{"evaluated": len(self.results), "failed": len(self.failed)},
            "expectations": [asdict(r) for r in ordered],
        }

    def failure_message(self) -> str:
        """Every failed expectation (split, check, observed vs threshold) and the report paths."""
        lines = [f"{len(self.failed)} of {len(self.results)} expectations failed:"]
        for r in self.failed:
            on = f" on {r.column}" if r.column else ""
            examples = "; ".join(_example(row) for row in r.offending_rows[:3])
            lines.append(
                f"  {r.split}: {r.check} ({r.expectation}{on}): observed {r.observed}, "
                f"expected {r.threshold}" + (f"; e.g. {examples}" if examples else "")
            )
            if r.remedy:
                lines.append(f"    {r.remedy}")
        return "\n".join([*lines, f"report: {self.markdown_path} (and {self.json_path.name})"])


def validate(params: Params, prepared_dir: Path, reports_dir: Path) -> ValidationReport:
    """Validate the prepared splits, write the reports and return the result.

    Args:
        params: the whole ``params.yaml``; thresholds come from ``params.validate_``.
        prepared_dir: folder with ``train/validation/test.parquet``.
        reports_dir: where ``validation.json`` and ``validation.md`` are written.

    Raises:
        StageError: a prepared file is missing or unreadable (no report is written then).
    """
    with _returning_arrow_pool():
        return _validate(params, prepared_dir, reports_dir)


@contextlib.contextmanager
def _returning_arrow_pool() -> Iterator[None]:
    """Arrow allocates through jemalloc with decay 0 here: freed pages go back to the OS at once.

    Reading the parquet files frees about as much scratch memory (pages, decompression
    buffers) as the frames keep. Arrow's default pool, mimalloc, gives freed pages back to
    the OS only after a purge delay and only when it next runs on that thread, so how much of
    it is still resident when Great Expectations' import sets the peak depends on timing and
    thread scheduling (a busy machine): that was the run-to-run spread of
    tests/test_memory.py, 2.7 to 3.4 bytes of peak per byte of file (2.35, 2.35, 3.73 with the
    other fixes of this stage and mimalloc). jemalloc with decay 0 returns them at once: the
    three splits of a 40 MB CSV take 57 MB of RSS for 50 MB of Arrow data, where mimalloc
    kept 104 to 134 MB. Where pyarrow has no jemalloc (Windows wheels) the system allocator
    (79 MB) is next best. The previous pool comes back afterwards (Arrow buffers remember
    their pool).
    """
    previous = pa.default_memory_pool()
    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
        pa.jemalloc_set_decay_ms(0)
    except NotImplementedError:
        pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def _validate(params: Params, prepared_dir: Path, reports_dir: Path) -> ValidationReport:
    token = params.task == "token_classification"
    frames, entities = {}, {}
    for split in SPLITS:
        frames[split], entities[split] = _derive(
            _load(Path(prepared_dir) / f"{split}.parquet", token), token
        )
    results = _run_gx(_suites(frames, params, entities), params.validate_.max_offending_rows)
    for result in results:
        if not result.success:
            result.remedy = _remedy(result.check, params, frames.get(result.split))
    reports_dir = Path(reports_dir)
    report = ValidationReport(
        success=all(r.success for r in results),
        task=params.task,
        rows={split: len(frame) for split, frame in frames.items()},
        results=results,
        json_path=reports_dir / "validation.json",
        markdown_path=reports_dir / "validation.md",
    )
    _write_atomic(report.json_path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    _write_atomic(report.markdown_path, _markdown(report))
    if report.success:
        rows = "/".join(str(n) for n in report.rows.values())
        log.info(
            "validation passed: %d expectations on %s train/validation/test rows; report %s",
            len(results),
            rows,
            report.markdown_path,
        )
    return report


def _load(path: Path, token: bool) -> pd.DataFrame:
    if not path.is_file():
        raise StageError(
            f"{path}: prepared split not found; run the 'prepare' stage first "
            "(python -m tasks.prepare, or dvc repro prepare)"
        )
    try:
        # Token frames: lists of strings as Arrow lists (see _string_lists), not numpy objects.
        frame = _read_lists(path) if token else pd.read_parquet(path)
        frame = frame.reset_index(drop=True)
    except Exception as exc:
        raise StageError(f"{path}: cannot read the parquet file: {exc}") from None
    columns = list(frame.columns)
    # GX checks each value's Python type in an object column and the dtype of any other. A
    # string column stays in Arrow (pd.StringDtype(): only str or missing values, which GX
    # accepts as type "StringDtype", see _expect) and an int64 one as it is; any other
    # column becomes object, so its values are checked one by one. Objects for every text
    # took 14x the file in memory (bench/memory.py).
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
    """An Arrow string column in one contiguous chunk (one per parquet row group before).

    Arrow's ``take`` concatenates a column's chunks before it picks rows, so each time GX
    selects rows of a frame (the offending ones, or the non-null ones) a split's text was
    copied whole for the moment: +0.6x the file in peak memory (tests/test_memory.py).
    Concatenated once here, while the peak is still far off (Great Expectations is not
    imported yet).
    """
    chunks = pa.chunked_array(pa.array(column.array)).combine_chunks()
    return pd.Series(pd.arrays.ArrowStringArray(chunks), index=column.index, name=column.name)


def _read_lists(path: Path) -> pd.DataFrame:
    """A parquet file whose list-of-strings columns become Arrow list columns, each read and
    made one contiguous chunk before the next is read (a whole table read first, then
    concatenated, held every list twice at once)."""
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    columns = []
    for name in schema.names:
        column = parquet.read(columns=[name]).column(0)
        columns.append(column.combine_chunks() if _list_type(column.type) else column)
    table = pa.Table.from_arrays(columns, schema=schema)
    return table.to_pandas(types_mapper=_list_type)


def _list_type(arrow_type: pa.DataType) -> pd.ArrowDtype | None:
    """``pd.ArrowDtype`` for a list of strings (CoNLL tokens and tags), else None (the
    default conversion)."""
    lists = pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)
    if lists and arrow_type.value_type in (pa.string(), pa.large_string()):
        return pd.ArrowDtype(arrow_type)
    return None


def _string_lists(column: pd.Series) -> pd.Series:
    """An Arrow list-of-strings column in one contiguous chunk (see :func:`_one_chunk`), kept
    in Arrow; a list holding a null item becomes Python lists (the checks of
    :func:`_python_derived` then see it as before). Hand-written to close a named gap:
    sentences as Python lists of strings took 12x the file in memory (bench/memory.py
    --format conll)."""
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
class _Entities:
    """A split's entity types: one (row, type) pair per type found in a row (valid tags other
    than O) and the count of entities (B- tags) per type."""

    pairs: pd.DataFrame
    counts: pd.Series


def _derive(frame: pd.DataFrame, token: bool) -> tuple[pd.DataFrame, _Entities | None]:
    """Add the derived columns that some expectations check (where their inputs exist);
    return the frame and its entity types (token frames with tags)."""
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
        derive = _python_derived if lists is None else _arrow_derived
        entities = derive(frame, lists)
    for column in ("tokens", "tags"):
        if token and column in frame and isinstance(frame[column].dtype, pd.ArrowDtype):
            # Each value of an Arrow list column is a list (or null): the column_type check
            # reads one shared empty list per row, not every sentence as Python objects.
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


def _python_derived(frame: pd.DataFrame, _: None) -> _Entities:
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
    return _Entities(pd.DataFrame({"row": rows, "type": types}), pd.Series(counts, dtype=int))


# Sentences whose tags are judged at once: the per-tag arrays (~40 bytes a tag) are made for
# this many only (over a whole 100 MB file they took 2.6x the file, bench/memory.py).
TAG_ROWS = 65_536


def _arrow_derived(frame: pd.DataFrame, lists: pa.Array) -> _Entities:
    """The tag checks' columns from an Arrow list<string> column, the same as
    :func:`_python_derived` gives: each distinct tag is judged once in Python, each tag then
    by its number, TAG_ROWS sentences at a time; only the sentences with an offending tag
    are read as Python lists (for their messages)."""
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
    return _Entities(table, counts[counts > 0])


@dataclass
class _TagKinds:
    """Per distinct tag: a valid tag, its entity type's number (0: O), I- tag, B- tag."""

    valid: np.ndarray
    type_of: np.ndarray
    inside: np.ndarray
    begins: np.ndarray


def _judged(lists: pa.Array, names: pa.Array, kinds: _TagKinds) -> dict[str, np.ndarray]:
    """Some sentences' rows with a refused tag, rows with an IOB2 error, distinct (row, type
    number) pairs and the type numbers of their B- tags."""
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
    """An object column: ``message(tags)`` for the ``offending`` rows (Python lists of their
    tags), None elsewhere."""
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


def _expect(check: str, cls: type, show: str | None = None, unit: str = "", **kw: Any) -> Any:
    """A GX expectation whose meta carries the check name, its description and threshold.

    ``show`` names the user's column when GX checks a derived one.
    """
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
    # Where the derived column is only a flag, offending rows show the text (joined tokens).
    value = "key" if column in ("key", "duplicate_of", "in_train") else column
    if "column_A" in kw:
        column = f"{kw['column_A']}, {kw['column_B']}"
    meta = {"check": check, "description": CHECKS[check], "threshold": threshold}
    return cls(**kw, meta={**meta, "column": show or column, "value": value})


def _suites(
    frames: dict[str, pd.DataFrame], params: Params, entities: dict[str, _Entities | None]
) -> list[tuple[str, pd.DataFrame, list]]:
    """(split, frame, expectations) to run: one per split, plus the train class-share table."""
    ex = _gx().expectations
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
    entities: dict[str, _Entities | None],
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


def _remedy(check: str, params: Params, frame: pd.DataFrame | None) -> str:
    """How to get past a failed check: the ``validate`` key that relaxes it with its current
    value, or why no key does (then the data must change)."""
    cfg, token = params.validate_, params.task == "token_classification"
    labels = "null" if cfg.labels is None else cfg.labels
    if check == "text_length":
        unit = "tokens" if token else "characters"
        rows = "sentence(s)" if token else "row(s)"
        bounds = (
            f"relax with validate.min_text_length = {cfg.min_text_length} or "
            f"validate.max_text_length = {cfg.max_text_length} ({unit})"
        )
        if frame is None or ("n_tokens" if token else "text") not in frame:
            return bounds
        lengths = (
            frame["n_tokens"]
            if token
            else frame["text"].map(lambda v: len(v) if isinstance(v, str) else None)
        )
        lengths = pd.to_numeric(lengths, errors="coerce")
        too_long = int((lengths > cfg.max_text_length).sum())
        too_short = int((lengths < cfg.min_text_length).sum())
        parts = []
        if too_long:
            parts.append(
                f"{too_long} {rows} longer than validate.max_text_length = {cfg.max_text_length} "
                f"({unit}): raising it is safe, tokenize truncates every example at "
                "tokenize.max_length sub-tokens (and counts them in reports/tokenize.json)"
            )
        if too_short:
            parts.append(
                f"{too_short} {rows} shorter than validate.min_text_length = {cfg.min_text_length} "
                f"({unit}): lower it to accept them"
            )
        return "; ".join(parts) or bounds
    keyed = {
        "duplicate_share": f"relax with validate.max_duplicate_share = "
        f"{cfg.max_duplicate_share} (the share of a split's rows that may repeat an earlier "
        "text; prepare.deduplicate drops exact repeats, same text and label, before splitting)",
        "leakage": f"relax with validate.max_leakage_share = {cfg.max_leakage_share} (the "
        "share of validation/test rows that may repeat a train text)",
        "class_share": f"relax with validate.min_class_share = {cfg.min_class_share} (the "
        "smallest share of train a class may have)",
        "label_allowed": f"relax with validate.labels = {labels} (add the label there, or "
        "null to accept the labels seen in train)",
        "label_case": f"relax with validate.labels = {labels}: list every spelling there to "
        "keep them as separate classes; otherwise correct the labels in the data",
    }
    keyed["entity_type_allowed"] = keyed["label_allowed"]
    unseen = "no key relaxes it: a model cannot learn a class absent from train; add train "
    unseen += "examples of it or remove these rows"
    fixed = {
        "class_count": "no key relaxes it: a classifier needs at least two classes in train "
        "(check data.label_column and the source)",
        "label_in_train": unseen,
        "entity_type_in_train": unseen,
        "iob_sequence": "no key relaxes it; a file tagged in IOB1 (a chunk may start with "
        "I-) is converted to IOB2 by data.conll.scheme: iob1",
        "column_exists": "no key relaxes it: run the 'prepare' stage again",
        "column_type": "no key relaxes it: run the 'prepare' stage again",
    }
    default = "no key relaxes it: correct the data (the offending rows name file and line)"
    return keyed.get(check) or fixed.get(check) or default


def _split_expectations(
    ex: Any,
    split: str,
    frame: pd.DataFrame,
    params: Params,
    allowed: list | None,
    seen: list | None,
) -> Iterator[Any]:
    """One split's expectations, for the columns (and derived columns) it has."""
    cfg, token = params.validate_, params.task == "token_classification"
    text, unit = ("tokens", "tokens") if token else ("text", "characters")
    for column, type_ in {**COLUMNS[params.task], **SOURCE_COLUMNS}.items():
        if column != "group":
            yield _expect("column_exists", ex.ExpectColumnToExist, column=column)
        if column in frame:
            # A string column in Arrow (see _load) holds only str: GX accepts its dtype. An
            # Arrow list column is checked through its derived column (see _derive).
            types = [type_, "StringDtype"] if type_ == "str" else [type_]
            checked = f"{column}_type" if f"{column}_type" in frame else column
            yield _expect(
                "column_type",
                ex.ExpectColumnValuesToBeInTypeList,
                column if checked != column else None,
                column=checked,
                type_list=types,
            )
    if split == "train":
        yield _expect("not_empty", ex.ExpectTableRowCountToBeBetween, min_value=1)
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
    if not token and "label" in frame:
        yield _expect("label_not_null", ex.ExpectColumnValuesToNotBeNull, column="label")
        if allowed is not None:
            yield _expect(
                "label_allowed", ex.ExpectColumnValuesToBeInSet, column="label", value_set=allowed
            )
        if split != "train" and seen is not None:
            yield _expect(
                "label_in_train", ex.ExpectColumnValuesToBeInSet, column="label", value_set=seen
            )
    if token and "tags" in frame:
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
    """One row per class with its count and share in train (``counts``: rows per label; token
    task: entities, B- tags, per type)."""
    # An allowed class absent from train has share 0.
    counts = counts.reindex(sorted(set(counts.index) | set(allowed or [])), fill_value=0)
    shares = counts / max(int(counts.sum()), 1)
    # A plain RangeIndex: GX reports a named index as dicts rather than positions.
    return pd.DataFrame({"class": counts.index, "count": counts.values, "share": shares.values})


def _gx() -> Any:
    """Import GX lazily (it takes seconds) with its INFO logging silenced."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx

    # This module sets its own level on import.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    from great_expectations.execution_engine import pandas_execution_engine

    # GX fingerprints every batch under HASH_THRESHOLD bytes (a batch marker the reports do
    # not use) by hashing the whole frame, which turns every text into a Python object for
    # the moment: +3x the file in peak memory (bench/memory.py). 0 turns the marker off.
    pandas_execution_engine.HASH_THRESHOLD = 0
    return gx


def _run_gx(suites: list[tuple[str, pd.DataFrame, list]], max_rows: int) -> list[CheckResult]:
    """Run every suite on its frame within one ephemeral GX context."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas("prepared").add_dataframe_asset("frame")
    batch = asset.add_batch_definition_whole_dataframe("whole")
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max_rows}
    results = []
    for i, (split, frame, expectations) in enumerate(suites):
        suite = context.suites.add(gx.ExpectationSuite(f"{split}-{i}", expectations=expectations))
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{split}-{i}", data=batch, suite=suite)
        )
        run = definition.run(batch_parameters={"dataframe": frame}, result_format=result_format)
        order = {e.id: n for n, e in enumerate(suite.expectations)}  # GX reorders results
        for result in sorted(run.results, key=lambda r: order.get(r.expectation_config.id, 0)):
            results.append(_check_result(split, frame, result, max_rows))
    return results


def _check_result(split: str, frame: pd.DataFrame, result: Any, max_rows: int) -> CheckResult:
    config, res, success = result.expectation_config, result.result or {}, bool(result.success)
    meta, observed_value = config.meta or {}, res.get("observed_value")
    unit = "classes" if "class" in frame else "sentences" if "tags" in frame else "rows"
    if result.exception_info.get("raised_exception"):
        observed = f"error: {result.exception_info.get('exception_message')}"
    elif meta.get("check") == "class_count":
        found = ", ".join(map(repr, frame["class"]))
        plural = "" if len(frame) == 1 else "s"
        observed = f"{len(frame)} {frame.attrs['unit']}{plural} in train"
        observed += f": {found}" if found else ""
        observed_value = list(frame["class"])
    elif "unexpected_count" in res:
        counted = res["element_count"] - res.get("missing_count", 0)
        share = (res.get("unexpected_percent") or 0) / 100
        observed = f"{res['unexpected_count']} of {counted} {unit} ({share:.2%})"
        observed_value = {"unexpected": res["unexpected_count"], "of": counted, "share": share}
    elif config.type == "expect_column_to_exist":
        columns = ", ".join(map(str, frame.attrs.get("columns", [])))
        observed = "present" if success else f"missing (columns: {columns})"
    else:
        observed = str(observed_value)
    indexes = [] if success else res.get("partial_unexpected_index_list") or []
    return CheckResult(
        split=split,
        check=meta.get("check", config.type),
        expectation=config.type,
        column=meta.get("column"),
        description=meta.get("description", ""),
        success=success,
        observed=observed,
        threshold=meta.get("threshold", ""),
        observed_value=_plain(observed_value),
        unexpected_count=int(res.get("unexpected_count") or 0),
        offending_rows=[_row(frame, i, meta, config.kwargs) for i in indexes[:max_rows]],
    )


def _row(frame: pd.DataFrame, index: Any, meta: dict, kwargs: dict) -> dict[str, Any]:
    """An offending row: its 0-based position in the parquet file, its source and its value."""
    record = frame.loc[index]
    if "same_as" in frame:  # the spellings table has one row per label
        return {
            "class": record["class"],
            "count": int(record["count"]),
            "same_as": record["same_as"],
        }
    if "share" in frame:  # the class-share table has one row per class
        return {
            "class": record["class"],
            "count": int(record["count"]),
            "share": round(record["share"], 6),
        }
    if "column_A" in kwargs:
        pair = (kwargs["column_A"], kwargs["column_B"])
        value = ", ".join(f"{c}={_plain(record[c])}" for c in pair)
    else:
        value = _plain(record[meta["value"]])
    if isinstance(value, str) and len(value) > 200:
        value = f"{value[:200]}… ({len(value)} characters)"
    source = {c: _plain(record.get(c)) for c in ("source_file", "source_line")}
    return {"row": int(index), **source, "value": value}


def _example(row: dict[str, Any]) -> str:
    """A short mention of an offending row for the error message."""
    if "same_as" in row:
        rows = f"{row['count']} row{'' if row['count'] == 1 else 's'}"
        return f"{row['class']!r} ({rows}) differs only in case from {row['same_as']}"
    if "class" in row:
        return _escaped(f"{row['class']} {row['share']:.2%} ({row['count']})")
    value = _escaped(json.dumps(row["value"], ensure_ascii=False, default=str))
    value = value if len(value) <= 60 else value[:57] + "..."
    return f"row {row['row']} ({row['source_file']}:{row['source_line']}) {value}"


def _escaped(text: str) -> str:
    """``text`` with control and invisible characters written as escapes (``\\u200b``), so a
    message never holds a character its reader cannot see."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a cell value (numpy scalars, NaN, NA, lists)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if value is pd.NA or (isinstance(value, float) and value != value) else value


def _markdown(report: ValidationReport) -> str:
    rows = ", ".join(f"{split} {n}" for split, n in report.rows.items())
    lines = [
        f"# Data validation: {'passed' if report.success else 'FAILED'}",
        "",
        f"Task {report.task}; rows: {rows}. {len(report.failed)} of {len(report.results)} "
        "expectations failed. `row` is the 0-based position in the prepared parquet file.",
        "",
    ]
    if report.failed:
        lines += ["## Failed expectations", ""]
    for r in report.failed:
        on = f" on `{r.column}`" if r.column else ""
        lines += [f"### {r.split}: {r.check}", "", f"{r.description} (`{r.expectation}`{on}).", ""]
        lines += [f"Observed {r.observed}; expected {r.threshold}.", ""]
        if r.remedy:
            lines += [f"To pass: {r.remedy}.", ""]
        if r.offending_rows:
            keys = list(r.offending_rows[0])
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += [
                "| " + " | ".join(_cell(row, k) for k in keys) + " |" for row in r.offending_rows
            ]
            if r.unexpected_count > len(r.offending_rows):
                lines.append(f"\n(first {len(r.offending_rows)} of {r.unexpected_count} shown)")
            lines.append("")
    lines += [
        "## All expectations",
        "",
        "| split | check | column | passed | observed | expected |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for r in report.results:
        passed = "yes" if r.success else "**no**"
        cells = [r.split, r.check, r.column or "", passed, r.observed, r.threshold]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], key: str) -> str:
    value = row[key]
    text = json.dumps(value, ensure_ascii=False, default=str) if key == "value" else str(value)
    return _escaped(text).replace("|", "\\|")


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # A plain open (not mkstemp) so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


app = typer.Typer(add_completion=False, help="Validate the prepared splits (the data gate).")


@app.command()
@stage_command("validate")
def main(
    prepared_dir: Path = typer.Option(Path("data/prepared"), help="Folder of the prepared splits."),
    reports_dir: Path = typer.Option(Path("reports"), help="Where validation.json/.md go."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="The parameters file."),
) -> None:
    """Run the validation gate; exit 1 listing the failed expectations when it fails."""
    report = validate(load_params(params), prepared_dir, reports_dir)
    if not report.success:
        raise StageError(f"validation failed: {report.failure_message()}")


if __name__ == "__main__":
    app()
