"""Stage ``prepare``: read the configured source and write train/validation/test parquet files.

Reads ``task``, ``data`` and ``prepare`` from ``params.yaml``. One input file is split by
``prepare.split`` (grouped when ``data.group_column`` is set, else stratified by label for
text classification); given train/validation/test files are used as they are. Writes
``data/prepared/{train,validation,test}.parquet`` and ``summary.json`` atomically: a run
that fails leaves the previous outputs untouched.
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
    if data.builtin is not None:
        spec = BUILTINS[data.builtin]
        frame = read_builtin(data.builtin, raw_dir)  # the wheel's sha256 is checked there
        return {"all": frame}, [{"path": str(raw_dir / spec.wheel), "sha256": spec.sha256}]
    frames, inputs = {}, []
    for split, path in data.source.files().items():
        frames[split] = read_user_file(path, data, params.task)
        inputs.append({"path": str(path), "sha256": sha256_of(path)})
    return frames, inputs


def split_frame(
    frame: pd.DataFrame, ratios: SplitRatios, seed: int, stratify_by: str | None = None
) -> dict[str, pd.DataFrame]:
    """Deterministically split ``frame`` by ``ratios`` and ``seed``.

    Rows are split in units that never straddle two splits: a ``group`` value when the
    frame has that column (e.g. every review of one movie), otherwise one text (identical
    texts or sentences stay together, so duplicates cannot leak from train into test).
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
    if "text" in frame.columns:
        key = frame["text"].astype("string") + "\x00" + frame["label"].astype("string")
    else:
        key = frame["tokens"].map(" ".join) + "\x00" + frame["tags"].map(" ".join)
    return frame[~key.duplicated() | key.isna()].reset_index(drop=True)


def _split_units(frame: pd.DataFrame) -> pd.Series:
    """The key that keeps rows together: the group, else the text (or joined tokens)."""
    if "group" in frame.columns:
        keys = frame["group"]
    elif "text" in frame.columns:
        keys = frame["text"]
    else:
        keys = frame["tokens"].map(" ".join)
    row_keys = pd.Series([f"<row {i}>" for i in range(len(frame))], index=frame.index)
    return keys.astype("string").fillna(row_keys).astype(str)


def summarize(splits: dict[str, pd.DataFrame], params: Params, inputs: list[dict]) -> dict:
    """Counts, label (or entity type) distribution and length percentiles per split."""
    token_task = params.task == "token_classification"
    summary: dict = {
        "task": params.task,
        "source": params.data.builtin or "user files",
        "inputs": inputs,
        "seed": params.prepare.seed,
        "length_unit": "tokens" if token_task else "characters",
        "splits": {},
    }
    for split, frame in splits.items():
        if token_task:
            lengths = frame["tokens"].map(len)
            labels = Counter(t[2:] for tags in frame["tags"] for t in tags if t.startswith("B-"))
            extra = {"tokens": int(lengths.sum()), "entities": int(sum(labels.values()))}
        else:
            lengths = frame["text"].fillna("").str.len()
            labels = Counter(frame["label"].fillna("<null>"))
            extra = {}
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
    """Run the stage: read, split, write parquet files and ``summary.json``; return the summary."""
    frames, inputs = load_source(params, raw_dir)
    removed = 0
    if params.prepare.deduplicate:
        deduplicated = {name: drop_repeats(frame) for name, frame in frames.items()}
        removed = sum(len(frames[n]) - len(f) for n, f in deduplicated.items())
        frames = deduplicated
    if "all" in frames:
        stratify = "label" if params.task == "text_classification" else None
        splits = split_frame(frames["all"], params.prepare.split, params.prepare.seed, stratify)
    elif "validation" not in frames:
        splits = {**hold_out_validation(frames["train"], params), "test": frames["test"]}
    else:
        splits = frames
    if params.prepare.max_examples:
        splits = {name: f.head(params.prepare.max_examples) for name, f in splits.items()}
    for name, frame in splits.items():
        if frame.empty:
            raise StageError(
                f"split {name!r} is empty after splitting {sum(map(len, splits.values()))} "
                f"examples with prepare.split.{name} = {getattr(params.prepare.split, name)}"
            )
    summary = summarize(splits, params, inputs)
    summary["duplicates_removed"] = removed
    if not isinstance(params.data.source, str) and params.data.source.validation is None:
        summary["validation_origin"] = (
            f"held out from the train file (prepare.split.validation = "
            f"{params.prepare.split.validation})"
        )
    _write_atomically(splits, summary, out_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "sources.json").write_text(json.dumps(inputs, indent=2) + "\n")
    counts = ", ".join(f"{n} {len(f)}" for n, f in splits.items())
    log.info("prepared %s (%s) into %s", summary["source"], counts, out_dir)
    return summary


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
