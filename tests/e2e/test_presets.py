"""Presets (presets/*.yaml) run as DVC experiments and never change params.yaml.

The benchmark tests run end to end on slices of ../shared/datasets (its only use; skipped
when it is absent): each copies the project, writes the first sentences of each benchmark file
into a folder of its own (the user's copy, given with ``--data``), shrinks the preset's budget
(tiny tune, one epoch), commits, runs the preset with its CLI (every stage, registry
included) and applies the experiment to check its outputs. What they check (the preset's data
handling, splits, reports, registry) does not depend on the encoder: they train a tiny random
BERT whose vocabulary holds the slice's words (minutes less than the packaged encoder; the
real encoder's accuracy is checked in tests/integration/test_behaviour.py).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, commit, experiments, make_project, run, tiny_vocab, toy_text_frame

from tasks.commands.experiments import ExperimentError, run_experiment, set_param_args
from tasks.commands.presets import available_presets, load_preset
from tasks.core.config import ParamsError, load_params

SHARED = ROOT.parent / "shared" / "datasets"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"{SHARED} is absent")
FAST = {
    "tune.n_trials": 1,
    "tune.timeout": None,
    "tune.space": {
        "learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-4, "log": True},
        "epochs": {"type": "int", "low": 1, "high": 1},
    },
    "train.epochs": 1,
    "register.min_score": 0.0,  # a one-epoch model on a slice still becomes the champion
    "model.name_or_path": "models/pretrained/tiny",  # tiny_encoder
}


def tiny_encoder(target: Path, words: set[str]) -> None:
    """A random 2-layer BERT (hidden 32, 512 positions: the shipped max_length and context
    fit) whose WordPiece vocabulary holds ``words`` (lower-cased) whole, saved in ``target``:
    the slice's sentences keep their lengths in sub-tokens, as with a real encoder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = list(dict.fromkeys([*tiny_vocab(), *sorted(w.lower() for w in words)]))
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(target)
    tokenizer.save_pretrained(target)


def words_in(folder: Path) -> set[str]:
    """Every whitespace-separated word in the files of ``folder`` (a vocabulary superset)."""
    return {w for f in folder.iterdir() for w in f.read_text(encoding="utf-8").split()}


def conll_head(source: Path, target: Path, sentences: int) -> None:
    """The first ``sentences`` sentences of a CoNLL file, -DOCSTART- lines included."""
    blocks = source.read_text(encoding="utf-8").split("\n\n")
    kept = [b for b in blocks if b.strip() and not b.startswith("-DOCSTART-")][:sentences]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("-DOCSTART- -X- -X- O\n\n" + "\n\n".join(kept) + "\n", encoding="utf-8")


def tsv_head(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` rows of a TSV file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with source.open(encoding="utf-8") as handle:
        target.write_text("".join(itertools.islice(handle, rows + 1)), encoding="utf-8")


def shrink_preset(project: Path, name: str, **params) -> None:
    """Merge ``params`` into the project copy's ``presets/NAME.yaml``."""
    path = project / "presets" / f"{name}.yaml"
    document = yaml.safe_load(path.read_text())
    document["params"].update(params)
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def run_preset(tmp_path: Path, name: str, data: Path, **params) -> Path:
    """Run preset ``name`` (shrunk by FAST and ``params``) on ``data`` in a committed project
    copy; check that it left params.yaml and git alone, then apply the experiment so its
    outputs can be read."""
    project = make_project(tmp_path / "project")
    tiny_encoder(project / "models/pretrained/tiny", words_in(data))
    shrink_preset(project, name, **{**FAST, **params})
    commit(project)
    before = (project / "params.yaml").read_bytes()
    command = [sys.executable, "-m", "tasks.commands.presets", name, "--data", str(data)]
    done = run(command, project)
    # The import's record names a folder outside the project: untracked, never staged.
    assert run(["git", "diff", "--cached", "--name-only"], project).stdout == ""
    assert f"experiment '{name}' done" in done.stdout and f"dvc exp apply {name}" in done.stdout
    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists()
    assert name in experiments(project)
    run(["dvc", "exp", "apply", name], project)
    return project


@needs_shared
def test_conll2003_preset_runs_end_to_end(tmp_path):
    mine = tmp_path / "my-data" / "conll"
    for split, count in (("train", 300), ("dev", 80), ("test", 80)):
        conll_head(SHARED / "conll2003" / f"{split}.txt", mine / f"{split}.txt", count)
    project = run_preset(tmp_path, "conll2003", mine)
    params = yaml.safe_load((project / "params.yaml").read_text())  # the experiment's
    assert params["task"] == "token_classification" and params["data"]["format"] == "conll"
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    assert [summary["splits"][s]["examples"] for s in ("train", "validation", "test")] == [
        300,
        80,
        80,
    ]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["samples"] == 80 and 0 <= metrics["f1_micro"] <= 1
    assert {"PER", "LOC", "ORG", "MISC"} <= set(metrics["per_type"])
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["model_name"] == "conll2003-ner"
    # As shipped: fixed train values (no tuning) and document context around each sentence.
    best = json.loads((project / "reports/best_params.json").read_text())
    assert best["status"] == "disabled"
    manifest = json.loads((project / "data/tokenized/manifest.json").read_text())
    shipped = load_preset("conll2003").params["tokenize.context_tokens"]
    assert manifest["context_tokens"] == shipped > 0
    assert manifest["splits"]["train"]["context"]["documents"] == 1


@needs_shared
def test_sst2_preset_holds_validation_out_of_train_and_tests_on_dev(tmp_path):
    mine = tmp_path / "my-data" / "glue-sst2"
    tsv_head(SHARED / "sst2" / "train.tsv", mine / "train.tsv", 600)
    tsv_head(SHARED / "sst2" / "dev.tsv", mine / "dev.tsv", 100)
    project = run_preset(tmp_path, "sst2", mine)
    summary = json.loads((project / "data/prepared/summary.json").read_text())
    train, validation = (summary["splits"][s]["examples"] for s in ("train", "validation"))
    assert train + validation <= 600 and 0.03 < validation / (train + validation) < 0.08
    assert summary["splits"]["test"]["examples"] == 100
    assert "held out from the train file" in summary["validation_origin"]
    metrics = json.loads((project / "reports/metrics.json").read_text())
    assert metrics["samples"] == 100 and set(metrics["per_class"]) == {"0", "1"}
    report = (project / "reports/eval_report.md").read_text()
    assert "data/external/sst2/dev.tsv" in report
    registry = json.loads((project / "reports/registry.json").read_text())
    assert registry["model_name"] == "sst2-sentiment"
    best = json.loads((project / "reports/best_params.json").read_text())
    assert best["status"] == "tuned"  # the shipped tuning, shrunk to one trial


def test_shipped_presets_are_valid_and_read_their_data_from_data_external():
    assert {"conll2003", "sst2"} <= set(available_presets())
    for name in available_presets():
        preset = load_preset(name)
        set_param_args(ROOT / "params.yaml", preset.params)  # validated, exact as -S
        assert preset.target == f"data/external/{name}" and preset.files and preset.format
        source = load_params(ROOT / "params.yaml", preset.params).data.source
        paths = [p for p in source.model_dump(mode="json").values() if p]
        assert paths and all(p.startswith(f"data/external/{name}/") for p in paths)


def test_overrides_replace_whole_mappings_as_the_typed_params_do():
    """Hydra (behind -S) would merge a mapping into tune.space; a preset replaces it."""
    space = {"learning_rate": {"type": "float", "low": 1.0e-4, "high": 3.0e-4, "log": True}}
    args = set_param_args(ROOT / "params.yaml", {"tune.space": space, "prepare.seed": 7})
    replaced = "{learning_rate: {type: 'float', low: 0.0001, high: 0.0003, log: true}}"
    assert args == ["~tune.space", f"++tune.space={replaced}", "++prepare.seed=7"]


def test_a_bad_preset_changes_nothing(tmp_path):
    project = make_project(tmp_path / "project")
    before = (project / "params.yaml").read_bytes()
    presets = [sys.executable, "-m", "tasks.commands.presets"]
    unknown = run([*presets, "nope"], project, check=False)
    assert unknown.returncode == 1 and "unknown preset 'nope'" in unknown.stderr
    assert "conll2003" in unknown.stderr and "sst2" in unknown.stderr
    (tmp_path / "x.yaml").write_text("params: {}\ndata: {files: [a.txt]}\n")
    escape = run([*presets, "../../x"], project, check=False)  # a name never becomes a path
    assert escape.returncode == 1 and "a name is letters, digits, - and _" in escape.stderr
    broken = {
        "flat": "train.learning_rate: 0.1\n",  # the keys belong under params:
        "bad-value": "params:\n  train.learning_rate: -1\ndata: {files: [a.csv]}\n",
        "outside": "params: {}\ndata: {files: [../elsewhere.csv]}\n",
    }
    for name, text in broken.items():
        (project / "presets" / f"{name}.yaml").write_text(text)
    expected = {"flat": "expected a 'params:' mapping", "bad-value": "train.learning_rate"}
    expected["outside"] = "data: files: expected a list of file names"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a.csv").write_text("text,label\nok,positive\n")
    for name, message in expected.items():
        done = run([*presets, name, "--data", str(mine)], project, check=False)
        assert done.returncode == 1 and message in done.stderr, done.stderr
    assert (project / "params.yaml").read_bytes() == before
    assert not list((project / "data" / "external").glob("*.dvc"))


def test_a_preset_without_its_data_names_the_files_it_needs(tmp_path):
    project = commit(make_project(tmp_path / "project"))
    presets = [sys.executable, "-m", "tasks.commands.presets"]
    none = run([*presets, "conll2003"], project, check=False)
    assert none.returncode == 1 and len(none.stderr.strip().splitlines()) == 1, none.stderr
    for words in ("train.txt, dev.txt, test.txt", "CoNLL-2003 column files", "--data PATH"):
        assert words in none.stderr
    partial = tmp_path / "sst2"
    partial.mkdir()
    (partial / "train.tsv").write_text("sentence\tlabel\nfine\t1\n")
    done = run([*presets, "sst2", "--data", str(partial)], project, check=False)
    assert done.returncode == 1 and f"{partial} lacks dev.tsv" in done.stderr, done.stderr
    assert "header sentence<TAB>label" in done.stderr
    assert not (project / "data/external/sst2").exists()


def test_an_experiment_needs_a_commit_and_checks_overrides_first(tmp_path):
    project = make_project(tmp_path / "project")
    with pytest.raises(ParamsError, match=r"prepare\.sed: unknown key"):
        run_experiment(project, {"prepare.sed": 7}, "x")
    with pytest.raises(ExperimentError, match="commit the project first"):
        run_experiment(project, {"prepare.seed": 7}, "x")


def test_a_preset_runs_as_an_experiment_and_leaves_params_alone(tmp_path):
    """A preset on the user's folder: the first run imports it (git-ignored, origin recorded),
    each run is a new experiment (toy, toy-2) and the workspace's params.yaml, dvc.lock and
    git status stay as they were."""
    mine = tmp_path / "elsewhere" / "reviews"
    mine.mkdir(parents=True)
    toy_text_frame(150, seed=1)[["text", "label"]].to_csv(mine / "reviews.csv", index=False)
    project = make_project(tmp_path / "project")
    (project / "presets" / "toy.yaml").write_text(
        "data: {files: [reviews.csv], format: 'CSV: text,label'}\n"
        "params:\n  data.source: {path: data/external/toy/reviews.csv}\n"
        "  prepare.max_examples: 100\n"
    )
    commit(project)
    before = (project / "params.yaml").read_bytes()
    command = [sys.executable, "-m", "tasks.commands.presets", "toy", "--stage", "validate"]
    first = run([*command, "--data", str(mine)], project)
    assert f"importing {mine} -> data/external/toy" in first.stdout
    assert "experiment 'toy' done" in first.stdout and "dvc exp apply toy" in first.stdout
    record = yaml.safe_load((project / "data/external/toy.dvc").read_text())
    assert record["deps"][0]["path"] == str(mine)  # the origin, for dvc update
    second = run(command, project)  # the earlier import; stages restored from the run cache
    assert "importing" not in second.stdout and "experiment 'toy-2' done" in second.stdout
    assert "Stage 'prepare' is cached" in second.stdout

    assert (project / "params.yaml").read_bytes() == before
    assert not (project / "dvc.lock").exists()
    changed = run(["git", "status", "--porcelain"], project).stdout.split("\n")
    assert sorted(filter(None, changed)) == [
        "?? data/external/.gitignore",
        "?? data/external/toy.dvc",
    ]
    shown = experiments(project)
    for name in ("toy", "toy-2"):
        assert shown[name]["data"]["source"] == {"path": "data/external/toy/reviews.csv"}
        assert shown[name]["prepare"]["max_examples"] == 100
