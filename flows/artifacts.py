"""Prefect artifacts built from the report files each stage writes (never from stage internals)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.core.tracking import flatten

STAGE_REPORTS = {
    "prepare": "data/prepared/summary.json",
    "validate": "reports/validation.json",
    "tokenize": "data/tokenized/manifest.json",
    "tune": "reports/tune_trials.csv",
    "train": "reports/train_metrics.json",
    "evaluate": "reports/metrics.json",
    "register": "reports/registry.json",
    "report": "reports/report.html",
}


def publish_stage_artifact(stage: str, project: Path, failed: bool = False) -> str | None:
    """The Prefect artifact of ``stage``'s report (failed: only a fresh one); its key."""
    relative = STAGE_REPORTS.get(stage)
    path = project / relative if relative else None
    if path is None or not path.exists():
        return None
    key = f"{stage}-report"
    if stage in _MARKDOWN:
        markdown = _MARKDOWN[stage](path)
        create_markdown_artifact(key=key, markdown=markdown, description=f"{stage} decision")
        return key
    builder = _BUILDERS.get(stage, _flat_table)
    rows, description = builder(path)
    if failed:
        description = f"**{stage} failed.** {description}"
    create_table_artifact(key=key, table=rows, description=description)
    return key


def _summary_table(path: Path) -> tuple[list[dict[str, Any]], str]:
    summary = json.loads(path.read_text())
    rows = []
    for split, info in summary["splits"].items():
        labels = ", ".join(f"{k}: {v}" for k, v in info["labels"].items())
        rows.append(
            {
                "split": split,
                "examples": info["examples"],
                "labels": labels,
                f"p50 {summary['length_unit']}": info["length"]["p50"],
                f"p90 {summary['length_unit']}": info["length"]["p90"],
            }
        )
    return rows, f"Prepared data from `{summary['source']}` (seed {summary['seed']})."


def _validation_table(path: Path) -> tuple[list[dict[str, Any]], str]:
    report = json.loads(path.read_text())
    rows = [
        {
            "result": "FAIL" if not e["success"] else "pass",
            "split": e["split"],
            "check": e["check"],
            "column": e.get("column") or "",
            "observed": e["observed"],
            "expected": e["threshold"],
            "offending rows": e.get("unexpected_count", 0),
        }
        for e in report["expectations"]
    ]
    verdict = "passed" if report["success"] else f"FAILED ({report['failed']} failed)"
    return rows, f"Data validation {verdict}: {report['evaluated']} expectations."


def _trials_table(path: Path) -> tuple[list[dict[str, Any]], str]:
    with path.open(newline="") as handle:
        trials = list(csv.DictReader(handle))
    complete = [t for t in trials if t.get("state") == "COMPLETE" and t.get("value")]
    complete.sort(key=lambda t: float(t["value"]), reverse=True)
    return complete[:10], f"Tuning leaderboard: best 10 of {len(trials)} trials."


def _flat_table(path: Path) -> tuple[list[dict[str, Any]], str]:
    data = json.loads(path.read_text())
    rows = [
        {"key": k, "value": json.dumps(v)[:200] if isinstance(v, list) else v}
        for k, v in flatten(data).items()
    ]
    return rows, f"`{path.name}`"


def _registry_markdown(path: Path) -> str:
    report = json.loads(path.read_text())
    before = report["champion_before"]
    champion = (
        "none (first model)"
        if before is None
        else f"version {before['version']}, {report['metric']} {before['score']:.4f}"
        + (" (re-scored on the current test data)" if before["rescored"] else "")
    )
    aliases = ", ".join(f"`{a}` -> v{v}" for a, v in sorted(report["aliases"].items()))
    return "\n".join(
        [
            f"## `{report['model_name']}` version {report['version']}: {report['decision']}",
            "",
            f"- reason: {report['reason']}",
            f"- test {report['metric']}: {report['score']:.4f}",
            f"- champion before: {champion}",
            f"- aliases now: {aliases}",
            f"- MLflow run: `{report['run_id']}`; model: `{report['model_uri']}`",
            f"- test data hash: `{report['test_data_hash']}`",
        ]
    )


def _report_markdown(path: Path) -> str:
    """The run report's title and link (Prefect's UI renders markdown, not an HTML page)."""
    import html
    import re

    found = re.search(r"<title>(.*?)</title>", path.read_text(encoding="utf-8"), re.S)
    title = html.unescape(found.group(1)) if found else "Run report"
    return "\n".join(
        [
            f"## {title}",
            "",
            f"- open: [{path.name}]({path.resolve().as_uri()}) (one self-contained HTML file)",
            "- also in MLflow: the pipeline run's artifact `report/report.html`",
            f"- size: {path.stat().st_size // 1024} KB",
        ]
    )


_MARKDOWN = {"register": _registry_markdown, "report": _report_markdown}
_BUILDERS = {
    "prepare": _summary_table,
    "validate": _validation_table,
    "tune": _trials_table,
}
