"""Benchmark (not a test): peak memory of ``prepare`` and ``validate`` on a large file.

Generates a CSV (or JSONL) of ``--mb`` megabytes of review-like rows (two labels, texts of
40-400 characters, a few repeats), or a CoNLL-2003-like file (``--format conll``: documents,
IOB2 entities, 1% repeated sentences; run as token_classification), under ``.state/tmp/``,
copies the project's code there, runs ``python -m tasks.prepare`` then
``python -m tasks.validate`` as child processes and reads each one's peak resident set size
(``ru_maxrss`` of the waited child). The issue's bound: peak RSS under 3x the file size.
Prints its section, writes the run's JSON result (``--json``; default
``bench/results/memory-<UTC stamp>.json``, or beside ``--results``) and appends the section
(rendered by ``bench/render.py``) to ``--results`` (``bench/RESULTS.md``; ``--no-record``:
print only).

    .venv/bin/python bench/memory.py --mb 200 --format csv
    .venv/bin/python bench/memory.py --mb 100 --format conll
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from render import render  # bench/render.py
from results import add_arguments, json_path, record  # bench/results.py

ROOT = Path(__file__).resolve().parents[1]
WORDS_TEXT = (
    "the a movie film plot actor story scene was is and it this that very quite with of in on "
    "to for at by from about some long short old new big small good great bad awful dull "
    "brilliant director script music ending character performance"
)
WORDS = WORDS_TEXT.split(" ")


def generate(path: Path, megabytes: float, fmt: str, seed: int = 0) -> int:
    """Write about ``megabytes`` MB of labelled texts to ``path``; return the rows written."""
    if fmt == "conll":
        return generate_conll(path, megabytes, seed)
    rng = random.Random(seed)
    target, written, rows = int(megabytes * 1e6), 0, 0
    with path.open("w", encoding="utf-8", newline="") as out:
        if fmt == "csv":
            written += out.write("text,label\n")
        previous: list[str] = []
        while written < target:
            if previous and rng.random() < 0.01:  # a few exact repeats, as real data has
                text = rng.choice(previous)
            else:
                text = " ".join(rng.choices(WORDS, k=rng.randint(8, 70))) + f" #{rows}"
                if len(previous) < 1000:
                    previous.append(text)
            label = "positive" if rng.random() < 0.5 else "negative"
            if fmt == "csv":
                line = f'"{text}",{label}\n'
            else:
                line = json.dumps({"text": text, "label": label}) + "\n"
            written += out.write(line)
            rows += 1
    return rows


ENTITY_TYPES = ("PER", "LOC", "ORG", "MISC")


def generate_conll(path: Path, megabytes: float, seed: int = 0) -> int:
    """Write about ``megabytes`` MB of a CoNLL-2003-like file (``token POS chunk tag``,
    ``-DOCSTART-`` documents of 2-30 sentences of 3-30 tokens, 1% repeated sentences, IOB2
    entities); return the sentences written."""
    rng = random.Random(seed)
    target, written, sentences = int(megabytes * 1e6), 0, 0
    previous: list[str] = []
    with path.open("w", encoding="utf-8", newline="") as out:
        while written < target:
            written += out.write("-DOCSTART- -X- -X- O\n\n")
            for _ in range(rng.randint(2, 30)):
                if previous and rng.random() < 0.01:  # a repeat ("2 .")
                    block = rng.choice(previous)
                else:
                    block = _conll_sentence(rng, sentences)
                    if len(previous) < 1000:
                        previous.append(block)
                written += out.write(block + "\n")
                sentences += 1
    return sentences


def _conll_sentence(rng: random.Random, number: int) -> str:
    """One sentence's lines (a number token makes it unique)."""
    lines, left = [], rng.randint(3, 30)
    while left > 0:
        if rng.random() < 0.15:
            kind = rng.choice(ENTITY_TYPES)
            for i in range(min(rng.randint(1, 3), left)):
                word = rng.choice(WORDS).capitalize()
                lines.append(f"{word} NNP I-NP {'B' if i == 0 else 'I'}-{kind}")
                left -= 1
        else:
            lines.append(f"{rng.choice(WORDS)} NN B-NP O")
            left -= 1
    lines.append(f"{number} CD I-NP O")
    return "\n".join(lines) + "\n"


def project(directory: Path, data_file: Path, code: Path = ROOT) -> Path:
    """The code and params of ``code`` (a checkout) in ``directory``, reading ``data_file``
    as one source."""
    shutil.copytree(code / "tasks", directory / "tasks", ignore=shutil.ignore_patterns("__py*"))
    for name in ("params.yaml", "pyproject.toml"):
        shutil.copy2(code / name, directory / name)
    (directory / "data" / "external").mkdir(parents=True)
    shutil.move(data_file, directory / "data" / "external" / data_file.name)
    params = yaml.safe_load((directory / "params.yaml").read_text())
    params["data"]["source"] = {"path": f"data/external/{data_file.name}"}
    if data_file.suffix == ".conll":
        params["task"] = "token_classification"
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200)
    parser.add_argument("--format", choices=["csv", "jsonl", "conll"], default="csv")
    parser.add_argument("--label", default="", help="a note for the results table")
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="a checkout whose code runs (e.g. an old one)"
    )
    parser.add_argument("--no-record", action="store_true", help="print the section only")
    add_arguments(parser, "memory")
    args = parser.parse_args()
    scratch = ROOT / ".state" / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="bench-memory-") as tmp:
        data_file = Path(tmp) / f"big.{args.format}"
        rows = generate(data_file, args.mb, args.format)
        size = data_file.stat().st_size
        copy = project(Path(tmp) / "project", data_file, args.code)
        measured = []
        for stage in ("prepare", "validate"):
            # A fresh child per stage: RUSAGE_CHILDREN's maximum is then this stage's alone
            # (each runs in its own measuring process).
            probe = (
                "import resource, subprocess, sys; "
                "done = subprocess.run(sys.argv[1:]); "
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
                "sys.exit(done.returncode)"
            )
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", probe, sys.executable, "-m", f"tasks.{stage}"],
                cwd=copy,
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            if done.returncode:
                print(done.stdout[-3000:], done.stderr[-3000:])
                raise SystemExit(f"{stage} failed ({done.returncode})")
            rss = int(done.stdout.strip().splitlines()[-1]) * 1024
            measured.append({"stage": stage, "peak_rss_bytes": rss, "wall_s": wall})
            print(f"{stage}: peak RSS {rss / 1e6:.0f} MB = {rss / size:.2f}x, {wall:.1f} s")
    finished = datetime.datetime.now(datetime.UTC)
    result = {
        "bench": "memory",
        "finished": finished.isoformat(timespec="seconds"),
        "label": args.label,
        "machine": {
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "mb": args.mb,
        "code": str(args.code) if args.code != ROOT else None,
        "input": {"format": args.format, "bytes": size, "rows": rows},
        "stages": measured,
    }
    print("\n".join(render(result)))
    if not args.no_record:
        target = args.json or json_path("memory", f"{finished:%Y%m%dT%H%M%S}", args.results)
        record(result, args.results, target)


if __name__ == "__main__":
    main()
