"""The `finetune` console script: every command listed, each --help works with project-relative
defaults, and a prediction without a champion says why and what to run."""

from __future__ import annotations

import re
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import typer
import yaml
from conftest import free_port, register_tiny, run, start_server, stop_server
from typer.testing import CliRunner

from tasks.commands.main import DELEGATED, app, load
from tasks.core.config import Params
from tasks.core.environment import PROJECT_ROOT

FINETUNE = Path(sys.executable).parent / "finetune"
STAGES = ["prepare", "validate", "tokenize", "tune", "train", "evaluate", "register", "report"]
COMMANDS = [*STAGES, "run", "predict", "serve", "ui", "deploy", "servers", "sources", "params"]
COMMANDS += ["model"]
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}  # no wrapped paths in the help text
# Each command's help and what it must show: its project-relative defaults, its params.
HELP = {
    "prepare": ["data/prepared", "data/raw", "prepare.seed", "data.source"],
    "validate": ["data/prepared", "reports", "validate.max_leakage_share"],
    "tokenize": ["data/tokenized", "reports/tokenize.json", "tokenize.max_length"],
    "tune": ["data/tokenized", ".state", "tune.n_trials", "train.learning_rate"],
    "train": ["data/tokenized", "models/model", "train.learning_rate", "tune.enabled"],
    "evaluate": ["models/model", "reports", "evaluate.max_errors", "train.precision"],
    "register": ["data/prepared", "models/model", "register.min_score"],
    "report": ["reports", "tracking.uri"],
    "run": ["--preset", "--stage", "--flow"],
    "predict": ["--file", "--json", "--model-uri", "params.yaml"],
    "serve": ["--port", "--model-uri", "params.yaml"],
    "params": ["--schema", "--check", "params.yaml"],
    "ui mlflow": ["--port"],
    "ui prefect": ["--port"],
    "deploy serve": ["--cron"],
    "deploy pool": ["--pool", "--repo", "--branch"],
    "servers postgres": ["--port", "--stop"],
    "servers tracking": ["--postgres-port"],
    "servers url": ["--port"],
    "sources fetch": ["--cache-dir"],
    "model pin": ["--revision", "params.yaml", "HF_ENDPOINT"],
    "model fetch": ["mpnet-base", "download cache"],
}


def flat(text: str) -> str:
    """Help text with the wrapping undone: words separated by single spaces."""
    return " ".join(text.split())


def test_finetune_help_lists_every_command_without_importing_the_stages() -> None:
    assert FINETUNE.is_file(), (
        f"{FINETUNE} missing: make setup (or pip install --no-deps --no-build-isolation -e .)"
    )
    listed = run([str(FINETUNE), "--help"], PROJECT_ROOT, **WIDE).stdout
    names = re.findall(r"^│ ([a-z]+) ", listed, flags=re.MULTILINE)
    assert sorted(names) == sorted(COMMANDS)
    assert "Stage prepare: read the configured source" in listed  # its module's summary
    # Listing loads no stage: transformers, MLflow and Prefect are imported on use only.
    probe = (
        "import sys\nfrom tasks.commands.main import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('transformers', 'mlflow', 'prefect', 'tasks.train') "
        "if m in sys.modules))"
    )
    loaded = run([sys.executable, "-c", probe], PROJECT_ROOT).stdout.splitlines()[-1]
    assert loaded == "[]"


@pytest.mark.parametrize("command", list(HELP))
def test_each_command_has_help_with_project_relative_defaults(command: str) -> None:
    result = CliRunner().invoke(app, [*command.split(), "--help"], env=WIDE, prog_name="finetune")
    assert result.exit_code == 0, result.output
    assert f"Usage: finetune {command}" in flat(result.output)
    assert str(PROJECT_ROOT) not in result.output  # paths shown relative to the project
    for expected in HELP[command]:
        assert expected in result.output, f"{command} --help lacks {expected!r}"


# reST roles and literals: notes for engineers in docstrings, never in a user's --help.
MARKUP = (":func:", ":class:", ":data:", ":mod:", "``")


def command_paths(command, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """``finetune`` and every command and subcommand under it (the stages loaded)."""
    paths = [path]
    for name in command.list_commands(None) if hasattr(command, "list_commands") else []:
        sub = load(name) if not path and name in DELEGATED else command.get_command(None, name)
        paths += command_paths(sub, (*path, name))
    return paths


def test_help_is_for_users_without_docstring_markup() -> None:
    """Every --help (the group's, each command's, each subcommand's) is free of reST roles
    and literals; the check fails on the markup it looks for."""
    assert [m for m in MARKUP if m in "see :func:`prefect_server` and ``x``"] == [":func:", "``"]
    paths = command_paths(typer.main.get_command(app))
    assert ("ui", "mlflow") in paths and ("train",) in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env=WIDE, prog_name="finetune")
        assert result.exit_code == 0, result.output
        found = [m for m in MARKUP if m in result.output]
        assert not found, f"finetune {' '.join(path)} --help shows {found}"


def test_stage_help_describes_its_params_from_the_config() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env=WIDE, prog_name="finetune")
    described = Params.model_fields["train"].annotation.model_fields["learning_rate"]
    assert flat(f"train.learning_rate = 5.0e-05: {described.description}") in flat(result.output)
    assert "register.min_score" not in result.output  # only the keys train declares


def test_unknown_command_fails_with_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["trian"], env=WIDE, prog_name="finetune")
    assert result.exit_code == 2
    assert "train" in flat(result.output)


def test_predict_and_serve_without_a_champion_say_why_and_what_to_run(tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tracking"]["uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"  # an empty registry
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")
    name = "rotten_tomatoes-text-classifier"
    for command in (["predict", "A moving film."], ["serve"]):
        done = run([str(FINETUNE), *command, "--params", str(params)], tmp_path, check=False)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert f"models:/{name}@champion: no registered model {name!r}" in done.stderr
        assert "run the pipeline first (`finetune run`" in done.stderr


def test_predict_a_file_as_json_with_progress_and_serve_the_model(
    tiny_model_dir, tmp_path, sqlite_store, caplog
):
    """``finetune predict --file F --json``: one JSON line per non-blank line of F, in order,
    and progress in texts (chunk by chunk) on the log, not in the output; ``finetune serve``
    answers the same over REST."""
    import json

    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from tasks.commands.predict import CHUNK
    from tasks.core.data.labels import iob2_tags

    labels = iob2_tags(["PER"])
    model = AutoModelForTokenClassification.from_pretrained(
        tiny_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "model")
    uri = register_tiny(tmp_path / "model", "toy-cli-ner", "token_classification")
    texts = [f"alice went to paris {i}" for i in range(CHUNK + 10)]
    file = tmp_path / "texts.txt"
    file.write_text("\n".join([*texts[:5], "", *texts[5:]]) + "\n", encoding="utf-8")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    raw["tracking"]["uri"] = sqlite_store
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw), encoding="utf-8")

    command = ["predict", "--file", str(file), "--json", "--model-uri", uri]
    with caplog.at_level("INFO", logger="tasks.predict"):
        result = CliRunner().invoke(
            app, [*command, "--params", str(params)], env={"FINETUNE_PROGRESS": "lines"}
        )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [record["text"] for record in records] == texts
    assert all(isinstance(record["entities"], list) for record in records)
    progress = [r.getMessage() for r in caplog.records if r.name == "tasks.predict"]
    assert any(f"text {CHUNK}/{len(texts)}" in line for line in progress), progress
    assert f"text {len(texts)}/{len(texts)} (100%)" in progress[-1]

    # finetune serve: MLflow's model server on the same model, over REST.
    port = free_port()
    serve = [str(FINETUNE), "serve", "--model-uri", uri, "--port", str(port)]
    server = start_server(
        [*serve, "--params", str(params)], f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log"
    )
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": texts[:2]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = json.loads(response.read())["predictions"]
        refused = {}  # the limits (tasks/commands/serving.py): refused before the model runs
        for name, body in (
            ("batch", {"inputs": ["a"] * 257}),
            ("bytes", {"inputs": ["a" * 2_000_000]}),
        ):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )  # fmt: skip
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=60)
            refused[name] = (caught.value.code, json.loads(caught.value.read())["message"])
    finally:
        stop_server(server)
    assert served == [record["entities"] for record in records[:2]]
    assert refused == {
        "batch": (413, "257 inputs, more than 256 per request"),
        "bytes": (413, "request body over 1000000 bytes"),
    }


def test_shell_completion_installs_and_completes(tmp_path):
    """`finetune --install-completion` (Typer's) writes the shell's completion script, and
    the script's protocol completes command names, lazily loaded ones included."""
    finetune = str(Path(sys.executable).parent / "finetune")
    home = tmp_path / "home"
    home.mkdir()
    # Typer detects the shell from the parent process: a bash parent, however pytest started.
    install = ["bash", "-c", f"{shlex.quote(finetune)} --install-completion; exit $?"]
    installed = run(install, tmp_path, HOME=str(home))
    assert "completion installed" in installed.stdout.lower(), installed.stdout
    assert "finetune" in (home / ".bashrc").read_text()
    asked = {"_FINETUNE_COMPLETE": "complete_bash", "COMP_WORDS": "finetune tr", "COMP_CWORD": "1"}
    assert run([finetune], tmp_path, **asked).stdout.split() == ["train"]
    asked["COMP_WORDS"] = "finetune model ro"
    asked["COMP_CWORD"] = "2"
    assert run([finetune], tmp_path, **asked).stdout.split() == ["rollback"]
