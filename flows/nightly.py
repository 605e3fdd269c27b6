"""The nightly retrain on new data: refresh the DVC imports the data comes from, then report.

A run with ``update_imports`` first runs ``dvc update`` on the ``data/external/`` imports
``data.source`` reads, and ends with a ``nightly-summary`` artifact: "no new data", or the
examples per split before and after, label shares, the new score against the champion's and
the gate's decision, and the files to commit. The flow commits nothing: the artifact gives
the command.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml
from prefect import task
from prefect.artifacts import create_markdown_artifact

from flows.dvc_run import stream_dvc
from tasks.core.config import load_params

SUMMARY = "data/prepared/summary.json"
REGISTRY = "reports/registry.json"
ARTIFACT_KEY = "nightly-summary"


def used_imports(project: Path) -> list[str]:
    """The ``data/external/`` import ``.dvc`` files holding a file ``data.source`` reads."""
    params = load_params(project / "params.yaml")
    if params.data.builtin is not None:
        return []
    read = [(project / path).resolve() for path in params.data.source.files().values()]
    found = []
    for dvcfile in sorted((project / "data" / "external").glob("*.dvc")):
        meta = yaml.safe_load(dvcfile.read_text()) or {}
        if not meta.get("deps"):  # `dvc add`: no upstream to update
            continue
        outs = [(dvcfile.parent / out["path"]).resolve() for out in meta.get("outs", [])]
        if any(path == out or out in path.parents for path in read for out in outs):
            found.append(str(dvcfile.relative_to(project)))
    return found


@task(task_run_name="dvc update", retries=1, retry_delay_seconds=30)
def refresh_imports(project: Path) -> dict[str, list[str]]:
    """``dvc update`` the used imports: ``updated`` and ``changed`` (RuntimeError on failure)."""
    files = used_imports(project)
    before = {name: (project / name).read_bytes() for name in files}
    if files:
        returncode, output = stream_dvc(["update", *files], project)
        if returncode != 0:
            tail = "\n".join(output.strip().splitlines()[-10:])
            raise RuntimeError(f"dvc update {' '.join(files)} failed in {project}:\n{tail}")
    changed = [name for name in files if (project / name).read_bytes() != before[name]]
    return {"updated": files, "changed": changed}


def snapshot(project: Path) -> dict[str, Any]:
    """The split summary and registry report as they are before the run (None: absent)."""
    return {name: _read_json(project / name) for name in (SUMMARY, REGISTRY)}


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def publish_summary(
    project: Path, before: dict[str, Any], imports: dict[str, list[str]], ran: list[str]
) -> str:
    """The ``nightly-summary`` markdown artifact (see the module's docstring); returns it."""
    lines = [f"## Nightly: {'new data' if imports['changed'] else 'no new data'}", ""]
    updated = ", ".join(f"`{name}`" for name in imports["updated"]) or "none (built-in source)"
    lines += [f"Imports refreshed with `dvc update`: {updated}.", ""]
    lines += [f"Stages run: {', '.join(ran) or 'none, every stage was up to date'}.", ""]
    if "prepare" in ran:
        lines += split_changes(before[SUMMARY], _read_json(project / SUMMARY))
    if "register" in ran:
        lines += [model_decision(_read_json(project / REGISTRY)), ""]
    lines += files_to_commit(project)
    markdown = "\n".join(lines)
    title = "new data" if imports["changed"] else "no new data"
    create_markdown_artifact(key=ARTIFACT_KEY, markdown=markdown, description=f"nightly: {title}")
    return markdown


def split_changes(old: dict | None, new: dict | None) -> list[str]:
    """A table of examples per split before and after (net change) and the label shares."""
    if new is None:
        return []
    rows = ["| split | examples before | after | change | labels before | labels after |"]
    rows.append("|---|---|---|---|---|---|")
    for split, info in new["splits"].items():
        was = (old or {}).get("splits", {}).get(split)
        count = was["examples"] if was else 0
        change = info["examples"] - count
        rows.append(
            f"| {split} | {count if was else '-'} | {info['examples']} | {change:+d} "
            f"| {_shares(was)} | {_shares(info)} |"
        )
    return [*rows, ""]


def _shares(split: dict | None) -> str:
    """``negative 48%, positive 52%`` for a split's label counts."""
    if not split:
        return "-"
    total = sum(split["labels"].values()) or 1
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in split["labels"].items())


def model_decision(report: dict | None) -> str:
    """One line: the new version's score against the champion's, and the decision."""
    if report is None:
        return "No model was registered."
    champion = report.get("champion_before")
    against = (
        f"champion version {champion['version']} {champion['score']:.4f}"
        if champion and champion.get("score") is not None
        else "no champion before"
    )
    return (
        f"Model: `{report['model_name']}` version {report['version']} scored "
        f"{report['score']:.4f} ({report['metric']}) against {against}: "
        f"**{report['decision']}** ({report['reason']})."
    )


def files_to_commit(project: Path) -> list[str]:
    """The changed ``dvc.lock`` and ``.dvc`` files and the git command that commits them."""
    done = subprocess.run(
        ["git", "status", "--porcelain", "--", "dvc.lock", "*.dvc"],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    changed = sorted(line[3:].strip() for line in done.stdout.splitlines() if line.strip())
    if not changed:
        return ["Nothing to commit: `dvc.lock` and the `.dvc` files are as committed."]
    listed = " ".join(changed)
    return [
        f"Changed in the workspace ({project}): {', '.join(f'`{n}`' for n in changed)}. "
        "Commit them so that the repository records the data and models of this run:",
        "",
        "```",
        f'git add {listed} && git commit -m "nightly: new data"',
        "```",
    ]
