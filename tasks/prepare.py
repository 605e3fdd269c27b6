"""Stage ``prepare``: read the configured source and write train/validation/test parquet files.

Reads ``task``, ``data`` and ``prepare`` from ``params.yaml``. One input file is split by
``prepare.split`` in units that never straddle two splits: a group (``data.group_column``,
a CoNLL file's ``-DOCSTART-`` document, a built-in's movie), else one text (stratified by
label for text classification). Train and test files: validation is held out of train the
same way. Given validation and test files are used exactly as they are: deduplication
(``prepare.deduplicate``) only touches the single file or the train file; repeats in the
given files and their overlap with train are counted in ``summary.json``, not removed.
``prepare.max_examples`` (an explicit request) still cuts every split, given ones included.
Writes ``data/prepared/{train,validation,test}.parquet`` and ``summary.json`` atomically: a
run that fails leaves the previous outputs untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import typer

from tasks.core.cli import stage_command
from tasks.core.config import Params, SplitRatios, load_params, require_tracked_inputs
from tasks.core.environment import PROJECT_ROOT
from tasks.core.errors import StageError
from tasks.core.rowkeys import CHUNK_ROWS, first_rows, row_keys
from tasks.core.sources import BUILTINS, read_builtin, read_user_file, sha256_of

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
app = typer.Typer(add_completion=False, help=__doc__)


def load_source(params: Params, raw_dir: Path) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """Read the configured source into frames (``{"all": df}`` or one per split).

    Returns the frames and a list of the input files with their sha256 (for lineage).
    """
    data = params.data
    if data.group_column and params.task == "token_classification":
        raise StageError(
            f"data.group_column: {data.group_column!r} cannot be used with CoNLL files "
            "(task: token_classification): their columns have no names. Sentences are "
            "grouped by their -DOCSTART- document automatically (a document stays in one "
            "split); set data.group_column: null"
        )
    if data.builtin is not None:
        spec = BUILTINS[data.builtin]
        frame = read_builtin(data.builtin, raw_dir)  # the wheel's sha256 is checked there
        return {"all": frame}, [{"path": str(raw_dir / spec.wheel), "sha256": spec.sha256}]
    frames, inputs = {}, []
    for split, path in data.source.files().items():
        frames[split] = read_user_file(path, data, params.task)
        normalised = frames[split].attrs.get("labels_normalised", 0)  # stripped / NFC labels
        inputs.append(
            {"path": str(path), "sha256": sha256_of(path), "labels_normalised": normalised}
        )
    return frames, inputs


def split_frame(
    frame: pd.DataFrame, ratios: SplitRatios, seed: int, stratify_by: str | None = None
) -> dict[str, pd.DataFrame]:
    """Deterministically split ``frame`` by ``ratios`` and ``seed`` (see :func:`split_rows`)."""
    rows = split_rows(frame, ratios, seed, stratify_by)
    return {split: frame.iloc[taken].reset_index(drop=True) for split, taken in rows.items()}


def split_rows(
    frame: pd.DataFrame,
    ratios: SplitRatios,
    seed: int,
    stratify_by: str | None = None,
    kept: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The positions in ``frame`` of each split's rows (of the rows ``kept``, default all).

    Rows are split in units that never straddle two splits: a ``group`` value when the
    frame has that column (every review of one movie, every sentence of one CoNLL document;
    a row without a value is its own unit), otherwise one text (identical texts or sentences
    stay together, so duplicates cannot leak from train into test).
    Without groups, units are split within each value of ``stratify_by`` (the label), so
    every split keeps the class balance. Rows inside each split are shuffled. Positions, not
    frames: prepare copies each split's rows once, from the file's frame.
    """
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([ratios.train, ratios.validation, ratios.test])
    kept = np.arange(len(frame)) if kept is None else kept
    units = _split_units(frame).to_numpy()[kept]
    if stratify_by and "group" not in frame.columns:
        strata = frame[stratify_by].astype("string").fillna("<null>").to_numpy()[kept]
    else:
        strata = np.full(len(kept), "all", dtype=object)
    table = pd.DataFrame({"unit": units, "stratum": strata})
    table = table.groupby("unit", sort=True).agg(
        stratum=("stratum", "first"), size=("stratum", "size")
    )
    split_of_unit = np.zeros(units.max(initial=-1) + 1, dtype=np.int64)
    for _, members in table.groupby("stratum", sort=True):
        members = members.iloc[rng.permutation(len(members))]
        sizes = members["size"].to_numpy()
        # Each unit goes to the split whose ratio range holds the midpoint of its rows.
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        split_of_unit[members.index.to_numpy()] = np.minimum(np.searchsorted(bounds, midpoints), 2)
    assignment = split_of_unit[units]
    result = {}
    for split_index, split in enumerate(SPLITS):
        rows = kept[np.flatnonzero(assignment == split_index)]
        result[split] = rows[rng.permutation(len(rows))]
    return result


def hold_out_validation(
    train: pd.DataFrame, params: Params, kept: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Split a train file into train and validation (``prepare.split.validation`` of it),
    with the same grouping and stratification as a single-file split: the rows' positions."""
    share = params.prepare.split.validation
    if not 0 < share < 1:
        raise StageError(
            "data.source gives no validation file, so prepare.split.validation of the train "
            f"file is held out as validation; it must be between 0 and 1, got {share}"
        )
    ratios = SplitRatios(train=1 - share, validation=share, test=0.0)
    stratify = "label" if params.task == "text_classification" else None
    split = split_rows(train, ratios, params.prepare.seed, stratify, kept)
    return {"train": split["train"], "validation": split["validation"]}


def _repeats(frame: pd.DataFrame) -> np.ndarray:
    """True for each row repeating an earlier row's text and label (tokens and tags); a row
    without a text or a label repeats nothing."""
    if "text" in frame.columns:
        pair = frame[["text", "label"]]
        first, _ = first_rows(row_keys(pair))
        return (first != np.arange(len(frame))) & pair.notna().all(axis=1).to_numpy()
    first, _ = first_rows(_joined_keys(frame, ["tokens", "tags"]))
    return first != np.arange(len(frame))  # (a sentence has tokens and tags)


def _text_keys(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's text digest (:func:`row_keys`; token frames: of the joined tokens, as
    validate's leakage check sees them) and whether the row has a text."""
    if "text" in frame.columns:
        return row_keys(frame["text"]), frame["text"].notna().to_numpy()
    return _joined_keys(frame, ["tokens"]), np.ones(len(frame), dtype=bool)


def _joined_keys(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """:func:`row_keys` of list columns' values joined by spaces, joined CHUNK_ROWS rows at a
    time: the joined texts of a whole file are never held (they are as large as its tokens).
    One column hashes as its joined strings alone, so the digests (and the split units
    numbered in digest order) are those of the texts."""
    digests = [np.empty(0, dtype=np.dtype((np.void, 16)))]
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        joined = pd.DataFrame({c: _joined(chunk[c]) for c in columns})
        digests.append(row_keys(joined if len(columns) > 1 else joined[columns[0]]))
    return np.concatenate(digests)


def _joined(lists: pd.Series) -> pd.Series:
    """An Arrow ``list<string>`` column's values joined by spaces (a string column)."""
    return pd.Series(pd.array(pc.binary_join(pa.array(lists), " "), dtype="str"))


def _split_units(frame: pd.DataFrame) -> pd.Series:
    """The unit that keeps rows together, as an integer: one per group, else per text (or
    joined tokens); a row without a group (text) is a unit of its own."""
    if "group" in frame.columns:
        keys, present = row_keys(frame["group"]), frame["group"].notna().to_numpy()
    else:
        keys, present = _text_keys(frame)
    _, units = first_rows(keys)
    missing = ~present
    units[missing] = units.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return pd.Series(units, index=frame.index)


def _grouped_by(params: Params) -> str | None:
    """What a ``group`` column holds, in words (None: the source has no groups)."""
    if params.task == "token_classification":
        return "document (-DOCSTART- block of the CoNLL file)"
    if params.data.builtin == "rotten_tomatoes":
        return "movie (built-in rotten_tomatoes)"
    if params.data.group_column:
        return f"data.group_column {params.data.group_column!r}"
    return None


def summarize(splits: dict[str, pd.DataFrame], params: Params, inputs: list[dict]) -> dict:
    """Counts, label (or entity type) distribution and length percentiles per split, and the
    number of groups (CoNLL: documents) per split when the rows have groups."""
    summary = _summary_head(params, inputs)
    if any("group" in frame.columns for frame in splits.values()):
        summary["grouped_by"] = _grouped_by(params)
    for split, frame in splits.items():
        summary["splits"][split] = _split_summary(frame, params)
    summary["total_examples"] = sum(len(f) for f in splits.values())
    return summary


def _summary_head(params: Params, inputs: list[dict]) -> dict:
    token_task = params.task == "token_classification"
    return {
        "task": params.task,
        "source": params.data.builtin or "user files",
        "inputs": inputs,
        "seed": params.prepare.seed,
        "length_unit": "tokens" if token_task else "characters",
        "splits": {},
    }


def _split_summary(frame: pd.DataFrame, params: Params, taken: np.ndarray | None = None) -> dict:
    """One split's counts, labels (entity types) and length percentiles: the rows of
    ``frame`` at positions ``taken`` (None: all), read in place (texts are not copied)."""
    if params.task == "token_classification":
        lengths = _rows_of(_list_lengths(frame["tokens"]), taken)
        labels = _entity_counts(frame["tags"], taken)
        extra = {"tokens": int(lengths.sum()), "entities": int(sum(labels.values()))}
    else:
        lengths = _rows_of(frame["text"].fillna("").str.len(), taken)
        labels = _rows_of(frame["label"], taken).fillna("<null>").value_counts().to_dict()
        extra = {}
    if "group" in frame.columns:
        extra["groups"] = int(_rows_of(_split_units(frame), taken).nunique())
    rows = len(frame) if taken is None else len(taken)
    percentiles = np.percentile(lengths, [50, 90, 99]) if len(lengths) else [0, 0, 0]
    return {
        "examples": rows,
        **extra,
        "labels": {k: int(v) for k, v in sorted(labels.items())},
        "length": {
            "p50": round(float(percentiles[0]), 2),
            "p90": round(float(percentiles[1]), 2),
            "p99": round(float(percentiles[2]), 2),
            "max": int(lengths.max()) if len(lengths) else 0,
        },
    }


def _list_lengths(lists: pd.Series) -> pd.Series:
    """The length of each list of an Arrow ``list<string>`` column."""
    return pd.Series(pc.list_value_length(pa.array(lists)).to_numpy(zero_copy_only=False))


def _entity_counts(tags: pd.Series, taken: np.ndarray | None) -> dict[str, int]:
    """Entities (``B-`` tags) per type in the rows at positions ``taken`` (None: all),
    counted in Arrow on the tags in place (the split's tags are not copied)."""
    lists = pa.array(tags)
    values = pc.list_flatten(lists)
    starts = np.flatnonzero(pc.starts_with(values, "B-").to_numpy(zero_copy_only=False))
    ends = lists.offsets.to_numpy()[1:] - lists.offsets[0].as_py()  # (a slice: offsets shifted)
    rows = np.searchsorted(ends, starts, side="right")
    if taken is not None:  # the entities of the chosen rows only
        chosen = np.zeros(len(lists), dtype=bool)
        chosen[taken] = True
        starts = starts[chosen[rows]]
    types = pc.utf8_slice_codeunits(values.take(pa.array(starts, pa.int64())), 2)
    counts = pc.value_counts(types).to_pylist()
    return {count["values"]: count["counts"] for count in counts}


def prepare(params: Params, out_dir: Path, raw_dir: Path) -> dict:
    """Run the stage: read, split, write parquet files and ``summary.json``; return the summary.

    Raises:
        StageError: the source cannot be read, or a split ends up empty (the message gives the
            rows read, the duplicates removed, the units and the params keys to change).
    """
    frames, inputs = load_source(params, raw_dir)
    # Only the frame that gets split is deduplicated: the single file, else the train file.
    # Given validation and test files are never altered (their repeats are only counted).
    divided = "all" if "all" in frames else "train"
    whole = frames.pop(divided)
    rows_read = len(whole)
    kept = np.arange(rows_read)
    if params.prepare.deduplicate:
        kept = np.flatnonzero(~_repeats(whole))
    removed = rows_read - len(kept)
    if divided == "all":
        stratify = "label" if params.task == "text_classification" else None
        rows = split_rows(whole, params.prepare.split, params.prepare.seed, stratify, kept)
    elif "validation" not in frames:
        rows = hold_out_validation(whole, params, kept)
    else:
        rows = {"train": kept}
    sizes = {name: len(rows[name]) if name in rows else len(frames[name]) for name in SPLITS}
    for name, size in sizes.items():
        if size == 0:
            divided_rows = whole.iloc[kept].reset_index(drop=True)
            raise _empty_split_error(name, divided_rows, params, rows_read, removed)
    cut = {}
    if params.prepare.max_examples:  # an explicit request: it cuts given files too
        limit = params.prepare.max_examples
        cut = {name: max(size - limit, 0) for name, size in sizes.items()}
        rows = {name: taken[:limit] for name, taken in rows.items()}
        frames = {name: frame.head(limit) for name, frame in frames.items()}
    given = [] if divided == "all" else [s for s in ("validation", "test") if s in frames]
    grouped = "group" in whole.columns or any("group" in f.columns for f in frames.values())

    summary = _summary_head(params, inputs)
    if grouped:
        summary["grouped_by"] = _grouped_by(params)
    lineage = _origins(params, given, removed)
    with _staged(out_dir) as staged:
        train_keys = None
        for name in SPLITS:
            # A split of the file's frame is read through its positions, never copied whole.
            frame, taken = (frames[name], None) if name in frames else (whole, rows[name])
            summary["splits"][name] = _split_summary(frame, params, taken)
            if name == "train" and given:
                keys, present = _text_keys(frame)
                train_keys = keys[_rows(present, taken)]
            if name in given:
                lineage.setdefault("given_files", {})[name] = _given_file(frame, train_keys)
            _write_parquet(frame, taken, staged / f"{name}.parquet")
        summary["total_examples"] = sum(s["examples"] for s in summary["splits"].values())
        summary.update(lineage)
        if cut:
            summary["max_examples"] = {"limit": params.prepare.max_examples, "rows_cut": cut}
        (staged / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "sources.json").write_text(json.dumps(inputs, indent=2) + "\n")
    counts = ", ".join(f"{n} {s['examples']}" for n, s in summary["splits"].items())
    log.info("prepared %s (%s) into %s", summary["source"], counts, out_dir)
    return summary


def _lineage(
    params: Params, splits: dict[str, pd.DataFrame], given: list[str], removed: int
) -> dict:
    """Where validation and test come from, what deduplication removed, and what is left in
    the given validation/test files as written: rows repeating an earlier row of the same
    file (text and label) and rows whose text also occurs in the train split."""
    lineage = _origins(params, given, removed)
    if given:
        keys, present = _text_keys(splits["train"])
        train_keys = keys[present]
        lineage["given_files"] = {split: _given_file(splits[split], train_keys) for split in given}
    return lineage


def _origins(params: Params, given: list[str], removed: int) -> dict:
    """Where validation and test come from and what deduplication removed."""
    share = params.prepare.split
    if params.data.builtin or params.data.source.path is not None:
        whole = params.data.builtin or params.data.source.path
        origins = {
            split: f"split from the single source {whole} "
            f"(prepare.split.{split} = {getattr(share, split)})"
            for split in ("validation", "test")
        }
        scope = "the single source, before splitting"
    else:
        files = params.data.source.files()
        origins = {split: f"the {split} file {files[split]}, as given" for split in given}
        origins.setdefault(
            "validation",
            f"held out from the train file {files['train']} "
            f"(prepare.split.validation = {share.validation})",
        )
        scope = "the train file only (given validation and test files are kept as they are)"
    if not params.prepare.deduplicate:
        scope = "nothing (prepare.deduplicate: false)"
    return {
        "validation_origin": origins["validation"],
        "test_origin": origins["test"],
        "deduplicated": scope,
        "duplicates_removed": removed,
    }


def _given_file(frame: pd.DataFrame, train_keys: np.ndarray) -> dict:
    """A given file's repeated rows and rows whose text occurs in train (as counts)."""
    return {
        "repeated_rows": int(_repeats(frame).sum()),
        "rows_in_train": _rows_in(frame, train_keys),
    }


def _rows_in(frame: pd.DataFrame, keys: np.ndarray) -> int:
    """How many of ``frame``'s rows have a text with one of ``keys`` (:func:`row_keys`)."""
    texts, present = _text_keys(frame)
    return int(np.isin(texts[present], keys).sum())


def _empty_split_error(
    name: str, divided: pd.DataFrame, params: Params, rows_read: int, removed: int
) -> StageError:
    """Why split ``name`` came out empty and which params keys change that."""
    ratios = params.prepare.split
    if params.data.builtin or params.data.source.path is not None:
        source = f"the single source {params.data.builtin or params.data.source.path}"
        how = "split by prepare.split = " + " / ".join(f"{s} {getattr(ratios, s)}" for s in SPLITS)
    else:
        source = f"the train file {params.data.source.train}"
        how = f"prepare.split.validation = {ratios.validation} of them held out as validation"
    units = int(_split_units(divided).nunique())
    grouped_by = _grouped_by(params) if "group" in divided.columns else None
    if grouped_by and params.task == "token_classification":
        unit_text = f"{units} documents (-DOCSTART- blocks; a document stays in one split)"
    elif grouped_by:
        unit_text = f"{units} groups ({grouped_by}; a group stays in one split)"
    else:
        unit_text = f"{units} distinct texts (identical texts stay in one split)"
    advice = [f"give {name} a larger share with prepare.split.* (ratios summing to 1)"]
    if removed:
        advice.append("keep repeats with prepare.deduplicate: false")
    if params.data.group_column and not params.data.builtin:
        advice.append("split row by row with data.group_column: null")
    if grouped_by and params.task == "token_classification":
        advice.append("or bring more documents (CoNLL documents are never divided)")
    else:
        advice.append("or bring more data")
    return StageError(
        f"split {name!r} is empty: {source} had {rows_read} rows, {removed} removed as "
        f"duplicates (prepare.deduplicate), leaving {len(divided)} rows in {unit_text}, "
        f"{how}. To fix: {'; '.join(advice)}"
    )


# Rows written at a time (one parquet row group): the writer then buffers this many rows,
# not a whole split (bench/memory.py).
WRITE_ROWS = 65_536


def _rows_of(values: pd.Series, taken: np.ndarray | None) -> pd.Series:
    """``values`` at positions ``taken`` (None: all)."""
    return values if taken is None else values.iloc[taken].reset_index(drop=True)


def _rows(mask: np.ndarray, taken: np.ndarray | None) -> np.ndarray:
    """The positions among ``taken`` (None: all) where ``mask`` holds."""
    return np.flatnonzero(mask) if taken is None else taken[mask[taken]]


def _write_parquet(frame: pd.DataFrame, taken: np.ndarray | None, path: Path) -> None:
    """Write ``frame``'s rows at positions ``taken`` (None: all) to ``path``, WRITE_ROWS
    rows at a time, so no copy of the whole split is made."""
    taken = np.arange(len(frame)) if taken is None else taken
    schema = _schema(frame)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(taken), WRITE_ROWS):
            batch = frame.iloc[taken[start : start + WRITE_ROWS]]
            writer.write_table(pa.Table.from_pandas(batch, schema=schema, preserve_index=False))


def _schema(frame: pd.DataFrame) -> pa.Schema:
    """The parquet schema of ``frame``. Arrow list columns (CoNLL tokens and tags) are
    described as the object columns of Python lists they were before they were read into
    Arrow (the same pandas metadata, hence the same files); their type is list<string>."""
    lists = [c for c in frame.columns if isinstance(frame[c].dtype, pd.ArrowDtype)]
    head = frame.head(1).astype(dict.fromkeys(lists, object))
    for column in lists:
        head[column] = head[column].map(list)
    return pa.Schema.from_pandas(head, preserve_index=False)


@contextlib.contextmanager
def _staged(out_dir: Path) -> Iterator[Path]:
    """A temporary folder in ``out_dir`` whose files are moved into ``out_dir`` when the
    block ends without an error (each move atomic); on an error nothing is moved."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        staged = Path(tmp)
        yield staged
        for path in staged.iterdir():
            os.replace(path, out_dir / path.name)


@app.command()
@stage_command("prepare")
def main(
    params_file: Path = typer.Option(Path("params.yaml"), "--params", help="Parameters file."),
    out_dir: Path = typer.Option(Path("data/prepared"), help="Where the splits are written."),
    raw_dir: Path = typer.Option(Path("data/raw"), help="Download folder of built-in data."),
) -> None:
    """Read the configured data source and write the prepared train/validation/test splits."""
    params = load_params(params_file)
    # Before any file is read: user data must be in data/external/, which DVC tracks.
    require_tracked_inputs(params, PROJECT_ROOT, ["data.source"])
    prepare(params, out_dir, raw_dir)


if __name__ == "__main__":
    app()
