"""Running Great Expectations: its lazy import, every suite run in one ephemeral context, and
each expectation's result turned into a check row (observed value, threshold, offending rows
with their parquet position and source line)."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from tasks.core.validation.report import CheckResult


def import_gx() -> Any:
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


def run_gx(suites: list[tuple[str, pd.DataFrame, list]], max_rows: int) -> list[CheckResult]:
    """Run every suite on its frame within one ephemeral GX context."""
    gx = import_gx()
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


def _plain(value: Any) -> Any:
    """A JSON-friendly version of a cell value (numpy scalars, NaN, NA, lists)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    return None if value is pd.NA or (isinstance(value, float) and value != value) else value
