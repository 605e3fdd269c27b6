"""What prepare's ``summary.json`` says about the splits (counts, labels, lengths, groups,
read in place) and their lineage (sources, deduplication, repeats and train overlap).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tasks.core.config import Params
from tasks.core.data.splitting import grouped_by, repeats, split_units, text_keys


def summarize(splits: dict[str, pd.DataFrame], params: Params, inputs: list[dict]) -> dict:
    """Counts, label (or entity type) distribution and length percentiles per split, and the
    number of groups (CoNLL: documents) per split when the rows have groups."""
    summary = summary_head(params, inputs)
    if any("group" in frame.columns for frame in splits.values()):
        summary["grouped_by"] = grouped_by(params)
    for split, frame in splits.items():
        summary["splits"][split] = split_summary(frame, params)
    summary["total_examples"] = sum(len(f) for f in splits.values())
    return summary


def summary_head(params: Params, inputs: list[dict]) -> dict:
    token_task = params.task == "token_classification"
    return {
        "task": params.task,
        "source": params.data.builtin or "user files",
        "inputs": inputs,
        "seed": params.prepare.seed,
        "length_unit": "tokens" if token_task else "characters",
        "splits": {},
    }


def split_summary(frame: pd.DataFrame, params: Params, taken: np.ndarray | None = None) -> dict:
    """One split's counts, labels and length percentiles, of the rows at ``taken`` (None: all)."""
    if params.task == "token_classification":
        lengths = _rows_of(_list_lengths(frame["tokens"]), taken)
        labels = _entity_counts(frame["tags"], taken)
        extra = {"tokens": int(lengths.sum()), "entities": int(sum(labels.values()))}
    else:
        lengths = _rows_of(frame["text"].fillna("").str.len(), taken)
        labels = _rows_of(frame["label"], taken).fillna("<null>").value_counts().to_dict()
        extra = {}
    if "group" in frame.columns:
        extra["groups"] = int(_rows_of(split_units(frame), taken).nunique())
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
    """Entities (``B-`` tags) per type in the rows at ``taken``, counted in Arrow in place."""
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


def _lineage(
    params: Params, splits: dict[str, pd.DataFrame], given: list[str], removed: int
) -> dict:
    """Where validation and test come from, what deduplication removed, and the repeats and
    train overlap left in given validation/test files."""
    lineage = origins(params, given, removed)
    if given:
        keys, present = text_keys(splits["train"])
        train_keys = keys[present]
        lineage["given_files"] = {split: given_file(splits[split], train_keys) for split in given}
    return lineage


def origins(params: Params, given: list[str], removed: int) -> dict:
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


def given_file(frame: pd.DataFrame, train_keys: np.ndarray) -> dict:
    """A given file's repeated rows and rows whose text occurs in train (as counts)."""
    return {
        "repeated_rows": int(repeats(frame).sum()),
        "rows_in_train": _rows_in(frame, train_keys),
    }


def _rows_in(frame: pd.DataFrame, keys: np.ndarray) -> int:
    """How many of ``frame``'s rows have a text with one of ``keys`` (:func:`row_keys`)."""
    texts, present = text_keys(frame)
    return int(np.isin(texts[present], keys).sum())


def _rows_of(values: pd.Series, taken: np.ndarray | None) -> pd.Series:
    """``values`` at positions ``taken`` (None: all)."""
    return values if taken is None else values.iloc[taken].reset_index(drop=True)
