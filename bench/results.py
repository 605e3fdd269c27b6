"""Shared by the benchmarks: append a markdown section to ``bench/RESULTS.md``."""

from __future__ import annotations

from pathlib import Path


def append_section(results_file: Path | str, lines: list[str]) -> None:
    """Append ``lines`` as one section (the file starts with a title when it is new)."""
    results_file = Path(results_file)
    results_file.parent.mkdir(parents=True, exist_ok=True)
    previous = results_file.read_text() if results_file.exists() else "# Benchmark results\n\n"
    results_file.write_text(previous.rstrip("\n") + "\n\n" + "\n".join(lines).rstrip("\n") + "\n")
    print(f"appended to {results_file}")
