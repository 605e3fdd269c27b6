"""params.yaml documented once: every config key has a description; the table, the schema and
the check of params.yaml all come from it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import run
from pydantic import BaseModel

import tasks.core.config
from tasks.commands.paramsdoc import SCHEMA_FILE, all_keys, check, schema
from tasks.core.environment import PROJECT_ROOT

FINETUNE = Path(sys.executable).parent / "finetune"
MODELS = [
    model
    for model in vars(tasks.core.config).values()
    if isinstance(model, type)
    and issubclass(model, BaseModel)
    and model.__module__ == "tasks.core.config"
]


@pytest.mark.parametrize("model", MODELS, ids=lambda model: model.__name__)
def test_every_config_key_has_a_description(model: type[BaseModel]) -> None:
    undocumented = [name for name, field in model.model_fields.items() if not field.description]
    assert not undocumented, f"{model.__name__}: fields without a description: {undocumented}"


def test_committed_params_and_schema_agree_with_the_config() -> None:
    assert check() == []
    assert SCHEMA_FILE.read_text(encoding="utf-8") == schema(), "run `finetune params --schema`"
    done = run([str(FINETUNE), "params", "--check"], PROJECT_ROOT)
    assert f"params.yaml agrees with tasks/core/config.py ({len(all_keys())} keys)" in done.stdout


def test_the_schema_accepts_params_yaml_and_rejects_a_wrong_value() -> None:
    document = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    jsonschema.validate(raw, document)
    raw["train"]["epochs"] = "three"
    with pytest.raises(jsonschema.ValidationError, match="three"):
        jsonschema.validate(raw, document)
    raw["train"]["epochs"], raw["train"]["epoch"] = 3, 3
    with pytest.raises(jsonschema.ValidationError, match="epoch"):
        jsonschema.validate(raw, document)


def test_a_disagreeing_params_yaml_fails_naming_the_key(tmp_path: Path) -> None:
    lines = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8").splitlines()
    edited = []
    for line in lines[1:]:  # the schema modeline dropped
        key = line.split(":")[0].strip()
        if key == "gradient_accumulation_steps":
            continue  # a missing key
        if key == "epochs" and line.startswith("  epochs: 3"):
            line = line.replace("epochs: 3", "epochs: 4")  # a default changed
        if line.startswith("  seed: 42") and "seed of the split" in line:
            line = "  seed: 42"  # prepare.seed without its comment
        edited.append(line)
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(edited) + "\n", encoding="utf-8")
    epochs_line = next(n for n, line in enumerate(edited, 1) if "epochs: 4" in line)
    seed_line = edited.index("  seed: 42") + 1

    problems = check(params)
    assert len(problems) == 4, problems
    done = run([str(FINETUNE), "params", "--check", "--params", str(params)], tmp_path, False)
    assert done.returncode == 1
    assert f"params.yaml:{epochs_line}: train.epochs: 4 here, but the default in " in done.stderr
    assert f"params.yaml:{seed_line}: prepare.seed: no comment" in done.stderr
    assert "train.gradient_accumulation_steps: missing (default 1)" in done.stderr
    assert "params.yaml:1: the first line must be the modeline" in done.stderr


def test_the_table_shows_every_key_with_its_default() -> None:
    done = run([str(FINETUNE), "params"], PROJECT_ROOT, COLUMNS="250")
    rows = {
        line.split()[0]: line.split()[1]
        for line in done.stdout.splitlines()
        if line[:2] == "  " and line.strip() and not line.startswith("   ")
    }
    leaves = [key for key in all_keys() if not key.section]
    assert set(rows) == {key.path for key in leaves}
    assert rows["train.epochs"] == "3" and rows["tune.storage"] == "null"
