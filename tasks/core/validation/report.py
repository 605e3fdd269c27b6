"""The validation report: one row per expectation, the gate's verdict, the error message of a
failed gate and the markdown rendering (``validation.json`` is ``to_dict()``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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


def markdown(report: ValidationReport) -> str:
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
