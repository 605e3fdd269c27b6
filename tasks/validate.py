"""Stage ``validate``: the data-quality gate between ``prepare`` and ``tokenize``.

Every verdict is a built-in Great Expectations expectation (derived values computed with
pandas). Writes ``reports/validation.json`` and ``validation.md``; a failed gate exits
non-zero, each failure with its ``remedy`` (the ``validate`` key that relaxes it, or why
none does). Files under ``data/`` are only read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pyarrow as pa
import typer

from tasks.core.cli import ParamsPath, stage_command, stage_params
from tasks.core.config import SPLITS, Params
from tasks.core.errors import StageError
from tasks.core.io import write_atomic
from tasks.core.paths import DEFAULT_PARAMS, PREPARED_DIR, REPORTS_DIR
from tasks.core.validation.expectations import suites
from tasks.core.validation.frames import derive, load
from tasks.core.validation.gx import run_gx
from tasks.core.validation.remedies import remedy
from tasks.core.validation.report import ValidationReport, markdown

log = logging.getLogger(__name__)


def validate(params: Params, prepared_dir: Path, reports_dir: Path) -> ValidationReport:
    """Validate ``prepared_dir``'s splits against ``params.validate_``, write
    ``validation.json`` and ``validation.md`` to ``reports_dir``, return the result.
    StageError when a prepared file is missing or unreadable (no report written)."""
    with _returning_arrow_pool():
        return _validate(params, prepared_dir, reports_dir)


@contextlib.contextmanager
def _returning_arrow_pool() -> Iterator[None]:
    """Arrow allocates through jemalloc with decay 0 here, then the previous pool is back.
    Gap: Arrow's default mimalloc returns freed read scratch late, so the peak RSS varied
    run to run (tests/test_memory.py; 3 splits of a 40 MB CSV: 57 MB with jemalloc, 104 to
    134 MB with mimalloc). Without jemalloc (Windows wheels): the system allocator."""
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
        frames[split], entities[split] = derive(
            load(Path(prepared_dir) / f"{split}.parquet", token), token
        )
    results = run_gx(suites(frames, params, entities), params.validate_.max_offending_rows)
    for result in results:
        if not result.success:
            result.remedy = remedy(result.check, params, frames.get(result.split))
    reports_dir = Path(reports_dir)
    report = ValidationReport(
        success=all(r.success for r in results),
        task=params.task,
        rows={split: len(frame) for split, frame in frames.items()},
        results=results,
        json_path=reports_dir / "validation.json",
        markdown_path=reports_dir / "validation.md",
    )
    write_atomic(report.json_path, json.dumps(report.to_dict(), indent=2, default=str) + "\n")
    write_atomic(report.markdown_path, markdown(report))
    if report.success:
        rows = "/".join(str(n) for n in report.rows.values())
        log.info(
            "validation passed: %d expectations on %s train/validation/test rows; report %s",
            len(results),
            rows,
            report.markdown_path,
        )
    return report


app = typer.Typer(add_completion=False, help="Validate the prepared splits (the data gate).")


@app.command()
@stage_command("validate")
def main(
    prepared_dir: Annotated[
        Path, typer.Option(help="Folder of the prepared splits.")
    ] = PREPARED_DIR,
    reports_dir: Annotated[Path, typer.Option(help="Where validation.json/.md go.")] = REPORTS_DIR,
    params_path: ParamsPath = DEFAULT_PARAMS,
) -> None:
    """Run the validation gate; exit 1 listing the failed expectations when it fails."""
    report = validate(stage_params(params_path, "validate"), prepared_dir, reports_dir)
    if not report.success:
        raise StageError(f"validation failed: {report.failure_message()}")


if __name__ == "__main__":
    app()
