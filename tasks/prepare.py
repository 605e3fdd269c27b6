"""Stage ``prepare``: read the configured source and write train/validation/test parquet files.

Reads ``task``, ``data`` and ``prepare`` from ``params.yaml``. Splits by ``prepare.split`` in
units that never straddle two splits (a group, a CoNLL document, else a text); given
validation and test files are used as they are. Writes
``data/prepared/{train,validation,test}.parquet`` and ``summary.json`` atomically.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import SPLITS, Params
from tasks.core.data.sources import BUILTINS, read_builtin, read_user_file, sha256_of
from tasks.core.data.split_summary import given_file, origins, split_summary, summary_head
from tasks.core.data.splitting import (
    empty_split_error,
    grouped_by,
    hold_out_validation,
    repeats,
    split_rows,
    text_keys,
)
from tasks.core.errors import StageError
from tasks.core.io import staged_files, write_atomic
from tasks.core.paths import DEFAULT_PARAMS, PREPARED_DIR, RAW_DIR, project_relative

log = logging.getLogger(__name__)
app = typer.Typer(add_completion=False, help=user_help(__doc__))


def load_source(params: Params, raw_dir: Path) -> tuple[dict[str, pd.DataFrame], list[dict]]:
    """The source as frames (``{"all": df}`` or per split) and the input files' sha256."""
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
        wheel = project_relative(raw_dir / spec.wheel)
        return {"all": frame}, [{"path": wheel, "sha256": spec.sha256}]
    frames, inputs = {}, []
    for split, path in data.source.files().items():
        frames[split] = read_user_file(path, data, params.task)
        normalised = frames[split].attrs.get("labels_normalised", 0)  # stripped / NFC labels
        inputs.append(
            {"path": str(path), "sha256": sha256_of(path), "labels_normalised": normalised}
        )
    return frames, inputs


def prepare(params: Params, out_dir: Path, raw_dir: Path) -> dict:
    """Read, split, write the parquet files and ``summary.json``; return the summary. Raises
    StageError when the source cannot be read or a split ends up empty (naming the rows
    read, duplicates removed, units and the params keys to change)."""
    frames, inputs = load_source(params, raw_dir)
    # Only the divided frame is deduplicated; given validation and test files never are.
    divided = "all" if "all" in frames else "train"
    whole = frames.pop(divided)
    rows_read = len(whole)
    kept = np.arange(rows_read)
    if params.prepare.deduplicate:
        kept = np.flatnonzero(~repeats(whole))
    removed = rows_read - len(kept)
    rows, by_sentence = _split_rows(whole, frames, params, kept, removed)
    sizes = {name: len(rows[name]) if name in rows else len(frames[name]) for name in SPLITS}
    cut = {}
    if params.prepare.max_examples:
        limit = params.prepare.max_examples
        cut = {name: max(size - limit, 0) for name, size in sizes.items()}
        rows = {name: taken[:limit] for name, taken in rows.items()}
        frames = {name: frame.head(limit) for name, frame in frames.items()}
    given = [] if divided == "all" else [s for s in ("validation", "test") if s in frames]
    grouped = "group" in whole.columns or any("group" in f.columns for f in frames.values())

    summary = summary_head(params, inputs)
    if grouped:
        summary["grouped_by"] = by_sentence or grouped_by(params)
    lineage = origins(params, given, removed)
    with staged_files(out_dir) as staged:
        _write_splits(staged, params, whole, frames, rows, given, summary, lineage)
        summary["total_examples"] = sum(s["examples"] for s in summary["splits"].values())
        summary.update(lineage)
        if cut:
            summary["max_examples"] = {"limit": params.prepare.max_examples, "rows_cut": cut}
        write_atomic(staged / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_atomic(raw_dir / "sources.json", json.dumps(inputs, indent=2) + "\n")
    counts = ", ".join(f"{n} {s['examples']}" for n, s in summary["splits"].items())
    log.info("prepared %s (%s) into %s", summary["source"], counts, out_dir)
    return summary


def _split_rows(
    whole: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    params: Params,
    kept: np.ndarray,
    removed: int,
) -> tuple[dict[str, np.ndarray], str | None]:
    """(positions of ``whole`` per split, the grouping note or None); StageError if one is empty."""
    rows = split_positions(whole, frames, params, kept)
    by_sentence = None
    if _empty_splits(rows, frames) and _documents_only(whole, params):
        # Too few documents to keep each in one split: sentences are the units instead.
        rows = split_positions(whole, frames, params, kept, by_group=False)
        documents = int(whole["group"].nunique())
        by_sentence = f"sentence ({documents} documents: too few to keep each in one split)"
    for name in _empty_splits(rows, frames):
        divided_rows = whole.iloc[kept].reset_index(drop=True)
        raise empty_split_error(name, divided_rows, params, len(whole), removed)
    return rows, by_sentence


def _write_splits(
    staged: Path,
    params: Params,
    whole: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    rows: dict[str, np.ndarray],
    given: list[str],
    summary: dict,
    lineage: dict,
) -> None:
    """Each split's parquet into ``staged``, its summary and (given files) repeats of train."""
    train_keys = None
    for name in SPLITS:
        frame, taken = (frames[name], None) if name in frames else (whole, rows[name])
        summary["splits"][name] = split_summary(frame, params, taken)
        if name == "train" and given:
            keys, present = text_keys(frame)
            train_keys = keys[_rows(present, taken)]
        if name in given:
            lineage.setdefault("given_files", {})[name] = given_file(frame, train_keys)
        _write_parquet(frame, taken, staged / f"{name}.parquet")


def split_positions(
    whole: pd.DataFrame,
    frames: dict[str, pd.DataFrame],
    params: Params,
    kept: np.ndarray,
    by_group: bool = True,
) -> dict[str, np.ndarray]:
    """The positions in ``whole`` of its splits (all three, train and validation, or train)."""
    if not frames:
        stratify = "label" if params.task == "text_classification" else None
        split, seed = params.prepare.split, params.prepare.seed
        return split_rows(whole, split, seed, stratify, kept, by_group)
    if "validation" not in frames:
        return hold_out_validation(whole, params, kept, by_group)
    return {"train": kept}


def _empty_splits(rows: dict[str, np.ndarray], frames: dict[str, pd.DataFrame]) -> list[str]:
    sizes = {name: len(rows[name]) if name in rows else len(frames[name]) for name in SPLITS}
    return [name for name, size in sizes.items() if size == 0]


def _documents_only(whole: pd.DataFrame, params: Params) -> bool:
    """Whether ``whole``'s groups are CoNLL documents (not a group column the user named)."""
    return params.task == "token_classification" and "group" in whole.columns


# Rows per parquet row group: the writer buffers this many, not a split (bench/memory.py).
WRITE_ROWS = 65_536


def _rows(mask: np.ndarray, taken: np.ndarray | None) -> np.ndarray:
    """The positions among ``taken`` (None: all) where ``mask`` holds."""
    return np.flatnonzero(mask) if taken is None else taken[mask[taken]]


def _write_parquet(frame: pd.DataFrame, taken: np.ndarray | None, path: Path) -> None:
    """Write ``frame``'s rows at ``taken`` (None: all) to ``path``, WRITE_ROWS at a time."""
    taken = np.arange(len(frame)) if taken is None else taken
    schema = _schema(frame)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, len(taken), WRITE_ROWS):
            batch = frame.iloc[taken[start : start + WRITE_ROWS]]
            writer.write_table(pa.Table.from_pandas(batch, schema=schema, preserve_index=False))


def _schema(frame: pd.DataFrame) -> pa.Schema:
    """The parquet schema of ``frame``, Arrow list columns as object columns (same files)."""
    lists = [c for c in frame.columns if isinstance(frame[c].dtype, pd.ArrowDtype)]
    head = frame.head(1).astype(dict.fromkeys(lists, object))
    for column in lists:
        head[column] = head[column].map(list)
    return pa.Schema.from_pandas(head, preserve_index=False)


@app.command()
@stage_command("prepare")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    out_dir: Annotated[Path, typer.Option(help="Where the splits are written.")] = PREPARED_DIR,
    raw_dir: Annotated[Path, typer.Option(help="Download folder of built-in data.")] = RAW_DIR,
) -> None:
    """Read the configured data source and write the prepared train/validation/test splits."""
    params = stage_params(params_path, "prepare")  # checked: inputs tracked by DVC
    prepare(params, out_dir, raw_dir)


if __name__ == "__main__":
    app()
