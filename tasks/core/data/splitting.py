"""Splitting a frame into train, validation and test in units that never straddle two splits,
deduplication, and why a split came out empty.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.config import SPLITS, Params, SplitRatios
from tasks.core.errors import StageError
from tasks.core.data.rowkeys import CHUNK_ROWS, first_rows, row_keys


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
    by_group: bool = True,
) -> dict[str, np.ndarray]:
    """The shuffled positions of each split's rows (of the rows ``kept``, default all).

    Units (:func:`split_units`: a ``group`` with ``by_group``, else one text, so duplicates
    cannot leak into test) never straddle two splits. Without groups, units are split within
    each ``stratify_by`` value, keeping the class balance.
    """
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([ratios.train, ratios.validation, ratios.test])
    kept = np.arange(len(frame)) if kept is None else kept
    units = split_units(frame, by_group).to_numpy()[kept]
    if stratify_by and not (by_group and "group" in frame.columns):
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
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        split_of_unit[members.index.to_numpy()] = np.minimum(np.searchsorted(bounds, midpoints), 2)
    assignment = split_of_unit[units]
    result = {}
    for split_index, split in enumerate(SPLITS):
        rows = kept[np.flatnonzero(assignment == split_index)]
        result[split] = rows[rng.permutation(len(rows))]
    return result


def hold_out_validation(
    train: pd.DataFrame, params: Params, kept: np.ndarray | None = None, by_group: bool = True
) -> dict[str, np.ndarray]:
    """Positions of train and validation rows of a train file (``prepare.split.validation``
    held out), grouped and stratified as a single-file split."""
    share = params.prepare.split.validation
    if not 0 < share < 1:
        raise StageError(
            "data.source gives no validation file, so prepare.split.validation of the train "
            f"file is held out as validation; it must be between 0 and 1, got {share}"
        )
    ratios = SplitRatios(train=1 - share, validation=share, test=0.0)
    stratify = "label" if params.task == "text_classification" else None
    split = split_rows(train, ratios, params.prepare.seed, stratify, kept, by_group)
    return {"train": split["train"], "validation": split["validation"]}


def repeats(frame: pd.DataFrame) -> np.ndarray:
    """True for each row repeating an earlier row's text and label (tokens and tags); a row
    without a text or a label repeats nothing."""
    if "text" in frame.columns:
        pair = frame[["text", "label"]]
        first, _ = first_rows(row_keys(pair))
        return (first != np.arange(len(frame))) & pair.notna().all(axis=1).to_numpy()
    first, _ = first_rows(_joined_keys(frame, ["tokens", "tags"]))
    return first != np.arange(len(frame))  # (a sentence has tokens and tags)


def text_keys(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each row's text digest (token frames: joined tokens) and whether it has a text."""
    if "text" in frame.columns:
        return row_keys(frame["text"]), frame["text"].notna().to_numpy()
    return _joined_keys(frame, ["tokens"]), np.ones(len(frame), dtype=bool)


def _joined_keys(frame: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """:func:`row_keys` of list columns joined by spaces, CHUNK_ROWS rows at a time (a whole
    file's joined texts are never held); one column hashes as its joined texts."""
    digests = [np.empty(0, dtype=np.dtype((np.void, 16)))]
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = frame.iloc[start : start + CHUNK_ROWS]
        joined = pd.DataFrame({c: _joined(chunk[c]) for c in columns})
        digests.append(row_keys(joined if len(columns) > 1 else joined[columns[0]]))
    return np.concatenate(digests)


def _joined(lists: pd.Series) -> pd.Series:
    """An Arrow ``list<string>`` column's values joined by spaces (a string column)."""
    return pd.Series(pd.array(pc.binary_join(pa.array(lists), " "), dtype="str"))


def split_units(frame: pd.DataFrame, by_group: bool = True) -> pd.Series:
    """Each row's unit as an integer: its group (``by_group``), else its text; a row without
    either is a unit of its own."""
    if by_group and "group" in frame.columns:
        keys, present = row_keys(frame["group"]), frame["group"].notna().to_numpy()
    else:
        keys, present = text_keys(frame)
    _, units = first_rows(keys)
    missing = ~present
    units[missing] = units.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return pd.Series(units, index=frame.index)


def grouped_by(params: Params) -> str | None:
    """What a ``group`` column holds, in words (None: the source has no groups)."""
    if params.task == "token_classification":
        return "document (-DOCSTART- block of the CoNLL file)"
    if params.data.builtin == "rotten_tomatoes":
        return "movie (built-in rotten_tomatoes)"
    if params.data.group_column:
        return f"data.group_column {params.data.group_column!r}"
    return None


def empty_split_error(
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
    units = int(split_units(divided).nunique())
    grouping = grouped_by(params) if "group" in divided.columns else None
    if grouping and params.task == "token_classification":
        unit_text = f"{units} documents (-DOCSTART- blocks; a document stays in one split)"
    elif grouping:
        unit_text = f"{units} groups ({grouping}; a group stays in one split)"
    else:
        unit_text = f"{units} distinct texts (identical texts stay in one split)"
    advice = [f"give {name} a larger share with prepare.split.* (ratios summing to 1)"]
    if removed:
        advice.append("keep repeats with prepare.deduplicate: false")
    if params.data.group_column and not params.data.builtin:
        advice.append("split row by row with data.group_column: null")
    advice.append("or bring more data")
    return StageError(
        f"split {name!r} is empty: {source} had {rows_read} rows, {removed} removed as "
        f"duplicates (prepare.deduplicate), leaving {len(divided)} rows in {unit_text}, "
        f"{how}. To fix: {'; '.join(advice)}"
    )
