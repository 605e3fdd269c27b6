"""Bounded memory: prepare and validate grow by less than 3 bytes per byte of input file.

Each stage runs twice as a child process in one project copy, on a small file and on a
generated CSV of ~40 MB with the same rows; the peak resident set size of each run is read
with ``getrusage(RUSAGE_CHILDREN)`` in a fresh measuring process. What the file adds to the
peak, divided by what the file adds in size, must stay under 3 (before the fix: ~10 for
prepare and ~9 for validate; bench/memory.py measures the absolute peak on 200 MB).
A stage's fixed footprint (interpreter, pandas, pyarrow; Great Expectations alone ~165 MB)
does not depend on the file, so the ratio is taken over the growth.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from conftest import make_project, run, set_params

WORDS = [
    "the",
    "a",
    "movie",
    "film",
    "plot",
    "actor",
    "story",
    "scene",
    "was",
    "good",
    "great",
    "bad",
    "awful",
    "dull",
    "fine",
]
PROBE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)
BOUND = 3.0


def write_reviews(path: Path, megabytes: float, seed: int = 0) -> int:
    """A CSV of ``megabytes`` MB: labelled review-like texts of 8-70 words, 1% repeated."""
    rng = random.Random(seed)
    target, written, kept = int(megabytes * 1e6), 0, []
    with path.open("w", encoding="utf-8", newline="") as out:
        written += out.write("text,label\n")
        row = 0
        while written < target:
            if kept and rng.random() < 0.01:
                text = rng.choice(kept)
            else:
                text = " ".join(rng.choices(WORDS, k=rng.randint(8, 70))) + f" {row}"
                kept = [*kept[-999:], text]
            written += out.write(f'"{text}",{rng.choice(["positive", "negative"])}\n')
            row += 1
    return path.stat().st_size


def peak_rss(project: Path, stage: str) -> int:
    """Peak RSS in bytes of ``python -m tasks.<stage>`` run in ``project``."""
    done = run([sys.executable, "-c", PROBE, sys.executable, "-m", f"tasks.{stage}"], project)
    return int(done.stdout.strip().splitlines()[-1]) * 1024


@pytest.fixture(scope="module")
def growth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, int, float]]:
    """Per stage: peak RSS on the small and the large file, and the bytes of peak growth
    per byte of file growth."""
    project = make_project(tmp_path_factory.mktemp("memory") / "project")
    measured: dict[str, list[int]] = {"prepare": [], "validate": []}
    sizes = []
    for megabytes in (0.5, 40):
        data = project / "data" / "external" / "reviews.csv"
        sizes.append(write_reviews(data, megabytes))
        set_params(project, **{"data.source": {"path": "data/external/reviews.csv"}})
        for stage, peaks in measured.items():
            peaks.append(peak_rss(project, stage))
    added = sizes[1] - sizes[0]
    return {
        stage: (small, large, (large - small) / added) for stage, (small, large) in measured.items()
    }


@pytest.mark.parametrize("stage", ["prepare", "validate"])
def test_peak_memory_grows_less_than_three_times_the_file(stage, growth):
    small, large, ratio = growth[stage]
    print(f"{stage}: {small / 1e6:.0f} MB -> {large / 1e6:.0f} MB peak RSS, {ratio:.2f} per byte")
    assert ratio < BOUND, (
        f"{stage}: peak RSS {small / 1e6:.0f} MB on 0.5 MB, {large / 1e6:.0f} MB on 40 MB: "
        f"{ratio:.2f} bytes per byte of file (bound {BOUND})"
    )
