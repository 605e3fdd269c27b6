"""Shared by the benchmarks: store a run's JSON result, and append a markdown section (the
renderer's, ``bench/render.py``) to ``bench/RESULTS.md``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
JSON_DIR = BENCH / "results"  # one JSON file per run: <bench>-<UTC stamp>.json


def add_arguments(parser: argparse.ArgumentParser, bench: str) -> None:
    """The options of every benchmark that records its result: ``--results`` (the markdown
    file its section is appended to) and ``--json`` (where its JSON result goes)."""
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to append to")
    parser.add_argument(
        "--json",
        default=None,
        help="the run's JSON result: a .json file, or a .jsonl file to add a line to "
        f"(default: bench/results/{bench}-<stamp>.json, or beside --results)",
    )


def append_section(results_file: Path | str, lines: list[str]) -> None:
    """Append ``lines`` as one section (the file starts with a title when it is new)."""
    results_file = Path(results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    previous = results_file.read_text() if results_file.exists() else "# Benchmark results\n\n"
    results_file.write_text(previous.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n")
    print(f"appended to {results_file}")


def json_path(bench: str, stamp: str, results_file: Path | str) -> Path:
    """Where a run's JSON goes by default: ``bench/results/`` for the project's RESULTS.md,
    else beside the markdown file it is rendered into."""
    results_file = Path(results_file).resolve()
    folder = JSON_DIR if results_file == RESULTS else results_file.parent
    return folder / f"{bench}-{stamp}.json"


def write_json(result: dict[str, Any], path: Path | str) -> Path:
    """Write ``result``: its own file (``.json``), or one more line of a ``.jsonl`` file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl":
        with path.open("a") as stream:
            stream.write(json.dumps(result) + "\n")
    else:
        path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"result written to {path}")
    return path


def record(result: dict[str, Any], results_file: Path | str, path: Path | str) -> None:
    """Store ``result`` as JSON and append its rendered section to ``results_file``."""
    from render import render  # bench/render.py

    write_json(result, path)
    append_section(results_file, render(result))
