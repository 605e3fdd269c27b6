"""Benchmark (not a test): where the default pipeline's wall time goes, stage by stage.

Runs ``make run`` in ``--project`` (prepare the folder first: e.g. a fresh clone with
``data/raw`` copied in, so it starts from a clean state with the data already fetched),
timestamps every output line, and splits each stage's wall time into

- compute: the work the stage itself reports (tune: trial durations; train: training and
  validation; evaluate: inference). prepare, validate, tokenize and register report none;
- module import: a fresh interpreter importing the stage's module (``python -c "import
  tasks.X"``, measured separately, median of three). Stages import torch, transformers,
  MLflow and Great Expectations lazily, inside the work, so those imports are in "rest";
- the rest: library imports, setup, loading, writing outputs, MLflow logging and registry
  calls, DVC hashing.

Then times a no-op ``dvc repro`` (three times). Prints its section, writes the run's JSON
result (``--json``; default ``bench/results/pipeline_overhead-<UTC stamp>.json``, or beside
``--results``) and appends the section (rendered by ``bench/render.py``) to ``--results``
(``bench/RESULTS.md``).

    .venv/bin/python bench/pipeline_overhead.py --project .state/fresh-run
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from render import render  # bench/render.py
from results import add_arguments, json_path, record  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
STAGE = re.compile(r"Running stage '([a-z_]+)'")


def timed_lines(command: list[str], cwd: Path, log: Path) -> tuple[int, list[tuple[float, str]]]:
    """Run ``command``; return its exit code and (seconds since start, line) for each line."""
    started = time.monotonic()
    lines = []
    with (
        subprocess.Popen(
            command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as process,
        log.open("w") as handle,
    ):
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip()))
            handle.write(f"{lines[-1][0]:9.2f} {line}")
    lines.append((time.monotonic() - started, "<end>"))
    return process.returncode, lines


def stage_walls(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds from each ``Running stage`` line to the next one (or the end)."""
    starts = [(t, m.group(1)) for t, text in lines if (m := STAGE.search(text))]
    ends = [t for t, _ in starts[1:]] + [lines[-1][0]]
    return {name: end - start for (start, name), end in zip(starts, ends, strict=True)}


def reported_compute(project: Path) -> dict[str, float]:
    """Seconds of work the stages report in their outputs."""
    reports, compute = project / "reports", {}
    trials = reports / "tune_trials.csv"
    if trials.is_file():
        with trials.open() as handle:
            compute["tune"] = sum(float(row["duration"] or 0) for row in csv.DictReader(handle))
    train = reports / "train_metrics.json"
    if train.is_file():
        metrics = json.loads(train.read_text())
        compute["train"] = metrics["train_time_s"] + metrics["eval_time_s"]
    evaluate = reports / "inference_speed.json"
    if evaluate.is_file():
        compute["evaluate"] = json.loads(evaluate.read_text())["inference_seconds"]
    return compute


def import_seconds(project: Path, stage: str, python: str) -> float:
    """Median wall time of a fresh interpreter importing ``tasks.<stage>`` (3 runs)."""
    runs = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([python, "-c", f"import tasks.{stage}"], cwd=project, check=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, default=ROOT, help="where to run make run")
    add_arguments(parser, "pipeline_overhead")
    args = parser.parse_args()
    project = args.project.resolve()
    python = str(project / ".venv" / "bin" / "python")
    env_path = f"{project / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"
    os.environ["PATH"] = env_path

    log = project / ".state" / "make-run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    code, lines = timed_lines(["make", "run"], project, log)
    if code != 0:
        sys.exit(f"make run failed ({code}); see {log}")
    walls, compute = stage_walls(lines), reported_compute(project)
    stages = [
        {
            "stage": stage,
            "wall_s": wall,
            "compute_s": compute.get(stage),
            "import_s": import_seconds(project, stage, python),
        }
        for stage, wall in walls.items()
    ]
    before_first = min((t for t, text in lines if STAGE.search(text)), default=0.0)
    noop = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(["dvc", "repro"], cwd=project, check=True, capture_output=True)
        noop.append(time.perf_counter() - started)
    finished = datetime.datetime.now(datetime.UTC)
    result = {
        "bench": "pipeline_overhead",
        "finished": finished.isoformat(timespec="seconds"),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "command": shlex.join([sys.executable, *sys.argv]),
        "project": project.name,
        "stages": stages,
        "reported_compute": compute,
        "total_s": lines[-1][0],
        "before_first_s": before_first,
        "noop_s": noop,
    }
    print("\n".join(render(result)))
    stamp = f"{finished:%Y%m%dT%H%M%S}"
    record(result, args.results, args.json or json_path("pipeline_overhead", stamp, args.results))


if __name__ == "__main__":
    main()
