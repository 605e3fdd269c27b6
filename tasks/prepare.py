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

import json
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from tasks.cli import stage_command
from tasks.config import Params, SplitRatios, load_params, require_tracked_inputs
from tasks.environment import PROJECT_ROOT
from tasks.errors import StageError
from tasks.sources import BUILTINS, read_builtin, read_user_file, sha256_of

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
    """Deterministically split ``frame`` by ``ratios`` and ``seed``.

    Rows are split in units that never straddle two splits: a ``group`` value when the
    frame has that column (every review of one movie, every sentence of one CoNLL document;
    a row without a value is its own unit), otherwise one text (identical texts or sentences
    stay together, so duplicates cannot leak from train into test).
    Without groups, units are split within each value of ``stratify_by`` (the label), so
    every split keeps the class balance. Rows inside each split are shuffled.
    """
    rng = np.random.default_rng(seed)
    bounds = np.cumsum([ratios.train, ratios.validation, ratios.test])
    units = _split_units(frame)
    if stratify_by and "group" not in frame.columns:
        strata = frame[stratify_by].astype("string").fillna("<null>")
    else:
        strata = pd.Series("all", index=frame.index)
    table = pd.DataFrame({"unit": units, "stratum": strata})
    table = table.groupby("unit", sort=True).agg(
        stratum=("stratum", "first"), size=("stratum", "size")
    )
    split_of_unit: dict[str, int] = {}
    for _, members in table.groupby("stratum", sort=True):
        members = members.iloc[rng.permutation(len(members))]
        sizes = members["size"].to_numpy()
        # Each unit goes to the split whose ratio range holds the midpoint of its rows.
        midpoints = (np.cumsum(sizes) - sizes / 2) / sizes.sum()
        chosen = np.minimum(np.searchsorted(bounds, midpoints), 2)
        split_of_unit.update(zip(members.index, chosen, strict=True))
    assignment = units.map(split_of_unit).to_numpy()
    result = {}
    for split_index, split in enumerate(SPLITS):
        rows = np.flatnonzero(assignment == split_index)
        result[split] = frame.iloc[rows[rng.permutation(len(rows))]].reset_index(drop=True)
    return result


def hold_out_validation(train: pd.DataFrame, params: Params) -> dict[str, pd.DataFrame]:
    """Split a train file into train and validation (``prepare.split.validation`` of it),
    with the same grouping and stratification as a single-file split."""
    share = params.prepare.split.validation
    if not 0 < share < 1:
        raise StageError(
            "data.source gives no validation file, so prepare.split.validation of the train "
            f"file is held out as validation; it must be between 0 and 1, got {share}"
        )
    ratios = SplitRatios(train=1 - share, validation=share, test=0.0)
    stratify = "label" if params.task == "text_classification" else None
    split = split_frame(train, ratios, params.prepare.seed, stratify)
    return {"train": split["train"], "validation": split["validation"]}


def drop_repeats(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop rows repeating an earlier row's text and label (tokens and tags), keep the first."""
    return frame[~_repeats(frame)].reset_index(drop=True)


def _repeats(frame: pd.DataFrame) -> pd.Series:
    """True for each row repeating an earlier row's text and label (tokens and tags)."""
    if "text" in frame.columns:
        key = frame["text"].astype("string") + "\x00" + frame["label"].astype("string")
    else:
        key = frame["tokens"].map(" ".join) + "\x00" + frame["tags"].map(" ".join)
    return key.duplicated() & key.notna()


def _texts(frame: pd.DataFrame) -> pd.Series:
    """Each row's text (token frames: the joined tokens), as validate's leakage check sees it."""
    if "text" in frame.columns:
        return frame["text"].astype("string")
    return frame["tokens"].map(" ".join).astype("string")


def _split_units(frame: pd.DataFrame) -> pd.Series:
    """The key that keeps rows together: the group, else the text (or joined tokens)."""
    keys = frame["group"] if "group" in frame.columns else _texts(frame)
    row_keys = pd.Series([f"<row {i}>" for i in range(len(frame))], index=frame.index)
    return keys.astype("string").fillna(row_keys).astype(str)


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
    token_task = params.task == "token_classification"
    summary: dict = {
        "task": params.task,
        "source": params.data.builtin or "user files",
        "inputs": inputs,
        "seed": params.prepare.seed,
        "length_unit": "tokens" if token_task else "characters",
        "splits": {},
    }
    grouped = any("group" in frame.columns for frame in splits.values())
    if grouped:
        summary["grouped_by"] = _grouped_by(params)
    for split, frame in splits.items():
        if token_task:
            lengths = frame["tokens"].map(len)
            labels = Counter(t[2:] for tags in frame["tags"] for t in tags if t.startswith("B-"))
            extra = {"tokens": int(lengths.sum()), "entities": int(sum(labels.values()))}
        else:
            lengths = frame["text"].fillna("").str.len()
            labels = Counter(frame["label"].fillna("<null>"))
            extra = {}
        if "group" in frame.columns:
            extra["groups"] = int(_split_units(frame).nunique())
        percentiles = np.percentile(lengths, [50, 90, 99]) if len(lengths) else [0, 0, 0]
        summary["splits"][split] = {
            "examples": len(frame),
            **extra,
            "labels": dict(sorted(labels.items())),
            "length": {
                "p50": round(float(percentiles[0]), 2),
                "p90": round(float(percentiles[1]), 2),
                "p99": round(float(percentiles[2]), 2),
                "max": int(lengths.max()) if len(lengths) else 0,
            },
        }
    summary["total_examples"] = sum(len(f) for f in splits.values())
    return summary


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
    rows_read = len(frames[divided])
    removed = 0
    if params.prepare.deduplicate:
        frames[divided] = drop_repeats(frames[divided])
        removed = rows_read - len(frames[divided])
    if "all" in frames:
        stratify = "label" if params.task == "text_classification" else None
        splits = split_frame(frames["all"], params.prepare.split, params.prepare.seed, stratify)
    elif "validation" not in frames:
        splits = {**hold_out_validation(frames["train"], params), "test": frames["test"]}
    else:
        splits = {split: frames[split] for split in SPLITS}
    for name, frame in splits.items():
        if frame.empty:
            raise _empty_split_error(name, frames[divided], params, rows_read, removed)
    cut = {}
    if params.prepare.max_examples:  # an explicit request: it cuts given files too
        limit = params.prepare.max_examples
        cut = {name: max(len(f) - limit, 0) for name, f in splits.items()}
        splits = {name: f.head(limit) for name, f in splits.items()}
    summary = summarize(splits, params, inputs)
    given = [] if "all" in frames else [s for s in ("validation", "test") if s in frames]
    summary.update(_lineage(params, splits, given, removed))
    if cut:
        summary["max_examples"] = {"limit": params.prepare.max_examples, "rows_cut": cut}
    _write_atomically(splits, summary, out_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "sources.json").write_text(json.dumps(inputs, indent=2) + "\n")
    counts = ", ".join(f"{n} {len(f)}" for n, f in splits.items())
    log.info("prepared %s (%s) into %s", summary["source"], counts, out_dir)
    return summary


def _lineage(
    params: Params, splits: dict[str, pd.DataFrame], given: list[str], removed: int
) -> dict:
    """Where validation and test come from, what deduplication removed, and what is left in
    the given validation/test files as written: rows repeating an earlier row of the same
    file (text and label) and rows whose text also occurs in the train split."""
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
    lineage: dict = {
        "validation_origin": origins["validation"],
        "test_origin": origins["test"],
        "deduplicated": scope,
        "duplicates_removed": removed,
    }
    if given:
        in_train = set(_texts(splits["train"]).dropna())
        lineage["given_files"] = {
            split: {
                "repeated_rows": int(_repeats(splits[split]).sum()),
                "rows_in_train": int(_texts(splits[split]).isin(in_train).sum()),
            }
            for split in given
        }
    return lineage


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


def _write_atomically(splits: dict[str, pd.DataFrame], summary: dict, out_dir: Path) -> None:
    """Write everything to a temporary folder first, then move the files into place."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".tmp-") as tmp:
        staged = Path(tmp)
        for name, frame in splits.items():
            frame.to_parquet(staged / f"{name}.parquet", index=False)
        (staged / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
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
