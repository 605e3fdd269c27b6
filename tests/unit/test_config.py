"""Typed params: every bad key, type and value fails before work, naming key and value."""

import pytest
import yaml
from conftest import ROOT

from tasks.core.config import ParamsError, load_params

PROJECT_PARAMS = ROOT / "params.yaml"


def test_project_params_load_with_defaults():
    params = load_params(PROJECT_PARAMS)
    assert params.task == "text_classification"
    assert params.data.builtin == "rotten_tomatoes"
    assert params.prepare.split.train == pytest.approx(0.8)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"prepare.seed": "abc"}, "prepare.seed: must be a valid integer"),
        ({"prepare.split.test": -0.1}, "prepare.split.test: must be >= 0.0, got -0.1"),
        (
            {"prepare.split.train": 0.5},
            "prepare.split: split ratios must sum to 1, got 0.5 + 0.1 + 0.1 = 0.7",
        ),
        (
            {"validate.max_duplicate_share": 3},
            "validate.max_duplicate_share: must be <= 1.0, got 3",
        ),
        ({"prepare.max_examples": 0}, "prepare.max_examples: must be > 0, got 0"),
        ({"validate.min_class_shar": 0.1}, "validate.min_class_shar: unknown key (did you mean"),
        ({"modle": {"name_or_path": "x"}}, "modle: unknown key (did you mean 'model'?)"),
        (
            {"data.source": {"trian": "a.csv"}},
            "data.source.trian: unknown key (did you mean 'train'?)",
        ),
        ({"task": "regression"}, "task: must be one of 'text_classification' or"),
        ({"data.source": "imdb"}, "data.source: unknown built-in source 'imdb'"),
        ({"data.source": {"train": "a.csv"}}, "(missing: test)"),
        (
            {"task": "token_classification"},
            "data.source: 'rotten_tomatoes' is a text_classification dataset, but task is",
        ),
        ({"validate.min_text_length": 10, "validate.max_text_length": 5}, "must be <= max_text"),
    ],
)
def test_bad_params_name_the_key_and_value(override, message):
    with pytest.raises(ParamsError) as caught:
        load_params(PROJECT_PARAMS, overrides=override)
    assert message in str(caught.value)
    assert str(PROJECT_PARAMS) in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path):
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    raw["prepare"]["seed"] = "x"
    raw["validate"]["max_leakage_share"] = -1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as caught:
        load_params(path)
    assert "prepare.seed" in str(caught.value)
    assert "validate.max_leakage_share: must be >= 0.0, got -1" in str(caught.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match=r"nope\.yaml: file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("task: [unclosed\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml: not valid YAML"):
        load_params(broken)


def test_auto_epochs_follow_the_training_set_size():
    """`train.epochs: auto`: about AUTO_EPOCHS_STEPS optimizer steps, within AUTO_EPOCHS_RANGE."""
    from tasks.core.config import AUTO_EPOCHS_RANGE, AUTO_EPOCHS_STEPS

    train = load_params(ROOT / "params.yaml", {"train.epochs": "auto", "tune.enabled": False}).train
    assert train.epochs == "auto"
    steps_per_epoch = 1_300 // train.batch_size + 1  # a small NER file: 41 steps an epoch
    assert train.with_epochs_for(1_300).epochs == min(
        AUTO_EPOCHS_RANGE[1], -(-AUTO_EPOCHS_STEPS // steps_per_epoch)
    )
    assert train.with_epochs_for(6_800).epochs == 8  # rotten tomatoes: 213 steps an epoch
    assert train.with_epochs_for(63_633).epochs == AUTO_EPOCHS_RANGE[0]  # SST-2: 1,989
    assert train.with_epochs_for(63_633, processes=4).epochs == 4  # 498 steps an epoch
    fixed = load_params(ROOT / "params.yaml").train
    assert fixed.with_epochs_for(10).epochs == fixed.epochs  # a number is kept


def test_auto_epochs_are_refused_while_tuning_searches_epochs():
    with pytest.raises(ParamsError, match=r"remove epochs from tune\.space"):
        load_params(ROOT / "params.yaml", {"train.epochs": "auto", "tune.enabled": True})
