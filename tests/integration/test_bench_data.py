"""bench/speed/data.py feeds the product's own tokenize stage with samples of the reference
datasets as ``read_user_file`` reads them (CoNLL tokens and tags as Arrow lists)."""

from __future__ import annotations

import importlib

import pytest
from conftest import ROOT, tiny_params

from tasks.core.data.sources import read_user_file

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

BRUSSELS NNP B-NP B-LOC
1996-08-22 CD I-NP O
"""


@pytest.fixture
def bench_data(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    return importlib.import_module("speed.data")


def test_conll_samples_run_through_the_tokenize_stage(bench_data, tiny_model_dir, tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    params = tiny_params("token_classification", tiny_model_dir)
    frame = read_user_file(path, params.data, "token_classification")
    splits = {split: frame for split in ("train", "validation", "test")}

    data, manifest, seconds = bench_data.tokenize_splits(params, splits, tmp_path / "work")

    assert seconds > 0
    assert len(data["train"]) == len(frame) == 3
    assert [len(row["labels"]) for row in data["train"]] == [
        len(ids) for ids in data["train"]["input_ids"]
    ]
    assert set(manifest["labels"]) >= {"B-PER", "I-PER", "B-LOC", "B-ORG", "B-MISC", "O"}
