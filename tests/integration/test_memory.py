"""Bounded memory: prepare and validate grow by less than 3 bytes per byte of input file.

Each stage runs twice as a child process in one project copy, on a smaller and a larger
generated file of the same kind of rows; the peak resident set size of each run is read
with ``getrusage(RUSAGE_CHILDREN)`` in a fresh measuring process. What the file adds to the
peak, divided by what the file adds in size, must stay under 3 (before the fix: ~10 for
prepare and ~9 for validate on CSV; ~15 and ~12 on CoNLL; bench/memory.py measures the
absolute peak on 200 MB). A stage's fixed footprint (interpreter, pandas, pyarrow; Great
Expectations alone ~165 MB) does not depend on the file, so the ratio is taken over the
growth.

CSV: 0.5 MB and 40 MB. CoNLL: 25 MB and 50 MB, both past one parquet row group of prepare's
output (65,536 sentences, ~20 MB of this CoNLL): writing a row group costs a fixed ~70 MB
(the rows' copy and the parquet encoder's pages, tasks/prepare.py WRITE_ROWS), which a
0.5 MB file never reaches and which a larger file does not add to.
"""

from __future__ import annotations

import hashlib
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


ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")


def write_conll(path: Path, megabytes: float, seed: int = 0) -> int:
    """A CoNLL-2003-like file of ``megabytes`` MB (``token POS chunk tag``): -DOCSTART-
    documents of 2-30 sentences of 3-30 tokens, IOB2 entities, 1% repeated sentences."""
    rng = random.Random(seed)
    target, written, sentence, kept = int(megabytes * 1e6), 0, 0, []
    with path.open("w", encoding="utf-8", newline="") as out:
        while written < target:
            written += out.write("-DOCSTART- -X- -X- O\n\n")
            for _ in range(rng.randint(2, 30)):
                if kept and rng.random() < 0.01:
                    block = rng.choice(kept)
                else:
                    lines, length = [], rng.randint(3, 30)
                    while len(lines) < length:
                        if rng.random() < 0.15:
                            kind = rng.choice(ENTITY_TYPES)
                            for i in range(rng.randint(1, 3)):
                                word = rng.choice(WORDS).capitalize()
                                lines.append(f"{word} NNP I-NP {'I' if i else 'B'}-{kind}")
                        else:
                            lines.append(f"{rng.choice(WORDS)} NN B-NP O")
                    block = "\n".join([*lines, f"{sentence} CD I-NP O"]) + "\n\n"
                    kept = [*kept[-999:], block]
                written += out.write(block)
                sentence += 1
    return path.stat().st_size


def peak_rss(project: Path, stage: str) -> int:
    """Peak RSS in bytes of ``python -m tasks.<stage>`` run in ``project``."""
    done = run([sys.executable, "-c", PROBE, sys.executable, "-m", f"tasks.{stage}"], project)
    return int(done.stdout.strip().splitlines()[-1]) * 1024


FORMATS = {  # format -> file name, writer, sizes in MB, task
    "csv": ("reviews.csv", write_reviews, (0.5, 40), "text_classification"),
    "conll": ("ner.conll", write_conll, (25, 50), "token_classification"),
}


def measure(directory: Path, fmt: str) -> dict[str, tuple[int, int, float, tuple[int, int]]]:
    """Per stage: peak RSS on the smaller and the larger file, the bytes of peak growth per
    byte of file growth, and the two file sizes."""
    name, write, megabytes, task = FORMATS[fmt]
    project = make_project(directory / "project")
    data = project / "data" / "external" / name
    set_params(project, task=task, **{"data.source": {"path": f"data/external/{name}"}})
    measured: dict[str, list[int]] = {"prepare": [], "validate": []}
    sizes = []
    for size in megabytes:
        sizes.append(write(data, size))
        for stage, peaks in measured.items():
            peaks.append(peak_rss(project, stage))
    added = sizes[1] - sizes[0]
    return {
        stage: (small, large, (large - small) / added, (sizes[0], sizes[1]))
        for stage, (small, large) in measured.items()
    }


@pytest.fixture(scope="module")
def growth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The measurements of each format, made on first use."""
    made: dict[str, dict] = {}

    def of(fmt: str) -> dict:
        if fmt not in made:
            made[fmt] = measure(tmp_path_factory.mktemp(f"memory-{fmt}"), fmt)
        return made[fmt]

    return of


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("stage", ["prepare", "validate"])
def test_peak_memory_grows_less_than_three_times_the_file(stage, fmt, growth):
    small, large, ratio, (low, high) = growth(fmt)[stage]
    print(f"{stage} {fmt}: {small / 1e6:.0f} MB -> {large / 1e6:.0f} MB peak RSS, {ratio:.2f}")
    assert ratio < BOUND, (
        f"{stage}: peak RSS {small / 1e6:.0f} MB on {low / 1e6:.1f} MB of {fmt}, "
        f"{large / 1e6:.0f} MB on {high / 1e6:.1f} MB: {ratio:.2f} bytes per byte of file "
        f"(bound {BOUND})"
    )


# Rows the reader must treat as before: a tag to put in NFC form, refused tag formats, IOB2
# errors, an entity type in two letter cases, sentences before the first -DOCSTART-, a
# document right after a sentence (no blank line) and a repeated short sentence.
ODD_ROWS = """Peter B-PER
went O

-DOCSTART- -X- -X- O
John I-PER
Smith I-PER
x O

Mary B-PER
Lou I-LOC
q BAD
Cafe B-CAFE\u0301
Zed I-CAF\u00c9
-DOCSTART- -X- -X- O
2 O
. O

A b-per
Ann B-per
"""
# sha256 (first 16 hex digits) of each output before CoNLL files were read into Arrow
# (commit 8f63d42: Python lists of strings), for the same input and params.
UNCHANGED = {
    "single": {
        "summary.json": "9f8eb578231fdbd5",
        "test.parquet": "b42b61038f630513",
        "train.parquet": "33afc2a531e11aca",
        "validation.parquet": "914596282afaf7bc",
        "validation.json": "5e4009b9bd3adf29",
        "validation.md": "c1eed3f3d1e2ed94",
    },
    "given": {
        "summary.json": "65cdf686335f34fa",
        "test.parquet": "c8583e83d42eec90",
        "train.parquet": "795e3469e6987503",
        "validation.parquet": "2fa4f59e316c88f7",
        "validation.json": "9e1a64631f5382f2",
        "validation.md": "a865e7d0ccdcf5a6",
    },
}


@pytest.mark.parametrize("case", list(UNCHANGED))
def test_conll_outputs_are_the_same_as_before_the_arrow_reader(tmp_path, case):
    """prepare's parquet files and summary and validate's reports, byte for byte."""
    project = make_project(tmp_path / "project")
    external = project / "data" / "external"
    write_conll(external / "ner.conll", 0.3, seed=1)
    with (external / "ner.conll").open("a", encoding="utf-8") as out:
        out.write(ODD_ROWS * 3)
    if case == "single":
        source = {"path": "data/external/ner.conll"}
        extra = {"validate.labels": ["B-PER", "LOC", "per", "ORG", "MISC"]}
    else:
        (external / "test.conll").write_text(ODD_ROWS.replace("-DOCSTART- -X- -X- O", ""))
        source = {"train": "data/external/ner.conll", "test": "data/external/test.conll"}
        extra = {"data.conll.scheme": "iob1", "prepare.deduplicate": False}
    extra["validate.max_text_length"] = 5000  # the default then (null now): the same reports
    set_params(project, task="token_classification", **{"data.source": source}, **extra)
    run([sys.executable, "-m", "tasks.prepare"], project)
    run([sys.executable, "-m", "tasks.validate"], project, check=False)
    outputs = sorted((project / "data" / "prepared").glob("*")) + sorted(
        (project / "reports").glob("validation.*")
    )
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in outputs}
    report = (project / "reports" / "validation.md").read_text()
    failed = {"single": ["iob_sequence", "entity_type_allowed"], "given": ["label_case"]}
    for check in ["tag_format", *failed[case]]:  # the odd rows were judged
        assert f": {check}\n" in report
    assert digests == UNCHANGED[case]
