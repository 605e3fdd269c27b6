"""The README and docs/ pages name only things that exist: make targets, params keys, files,
commands."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path, PurePosixPath

import yaml

from tasks.commands.main import app
from tasks.commands.paramsdoc import all_keys
from tasks.core.environment import PROJECT_ROOT

# The front page and the pages it sends readers to, read as one text.
PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
README = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
SECTIONS = sorted({key.path.split(".")[0] for key in all_keys()})
EXTENSIONS = "py|json|jsonl|csv|tsv|md|yaml|yml|png|parquet|txt|lock|log|db|sh|toml|cfg"
# Words that start like a params key but are file names or code (`train.py`, `tasks.train`).
FILE_LIKE = re.compile(rf"\.({EXTENSIONS})$")


def make_targets() -> set[str]:
    text = (PROJECT_ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def code(text: str) -> str:
    """The README's code: fenced blocks and `inline` spans (prose may say "make it")."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))
    return "\n".join(fenced + inline)


def named_make_targets(text: str) -> set[str]:
    return set(re.findall(r"\bmake ([a-z][a-z0-9-]*)", code(text)))


def named_params_keys(text: str) -> set[str]:
    """``tune.n_trials``-style words whose first part is a params.yaml section."""
    sections = "|".join(SECTIONS)
    pattern = rf"(?<![\w./:-])((?:{sections})(?:\.[a-z_][a-z0-9_]*)+)(?![\w/(-])"
    # Lines quoting the error for a misspelt key name a wrong key on purpose.
    text = "\n".join(line for line in text.splitlines() if "unknown key" not in line)
    return {word for word in re.findall(pattern, text) if not FILE_LIKE.search(word)}


def known_key(word: str, paths: set[str], leaves: set[str]) -> bool:
    """A key of the config, or inside a key whose value is a mapping (``tune.space.epochs``,
    ``data.source.path``)."""
    parts = word.split(".")
    return word in paths or any(".".join(parts[:n]) in leaves for n in range(1, len(parts)))


def named_paths(text: str) -> set[str]:
    """Backquoted project paths: ``tasks/train.py``, ``reports/metrics.json``, ``dvc.yaml``."""
    found = set()
    for word in re.findall(r"`([^`\s]+)`", text):
        word = word.rstrip(".,:")
        if re.search(r"[*{}<>$@]|\.\.\.|://|^[./~]|^[A-Z_]+=", word):
            continue  # a pattern, a placeholder, a URL or an absolute/relative path
        top = word.split("/")[0]
        placeholder = any(re.fullmatch(r"[A-Z_]+", part.split(".")[0]) for part in word.split("/"))
        if placeholder and not (PROJECT_ROOT / word).exists():
            continue  # data/external/NAME, presets/NAME.yaml
        if "/" in word and (PROJECT_ROOT / top).is_dir():
            found.add(word.rstrip("/"))
        elif (
            "/" not in word
            and re.fullmatch(rf"[\w.-]+\.({EXTENSIONS})", word)
            and ((PROJECT_ROOT / word).exists() or word in ROOT_FILES)
        ):
            found.add(word)
    return found


ROOT_FILES = {"params.yaml", "dvc.yaml", "dvc.lock", "Makefile", "pyproject.toml"}


def declared_outputs() -> set[str]:
    """Every out, metric and plot of dvc.yaml: the files a run writes."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    outputs = set()
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                outputs.add(entry if isinstance(entry, str) else next(iter(entry)))
    return outputs


def stage_tree_files(text: str) -> set[str]:
    """File names in the diagram of the Stages section (``confusion.csv/.png`` is two)."""
    section = text.split("\n## Stages", 1)[1].split("\n## ", 1)[0]
    diagram = re.search(r"^```\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    names = re.sub(r"([\w-]+)\.(\w+)/\.(\w+)", r"\1.\2 \1.\3", diagram.group(1) if diagram else "")
    return set(re.findall(r"(?<![\w{,])([\w-]+\.(?:json|jsonl|csv|png|md|parquet))\b", names))


def dvc_file_names() -> set[str]:
    """The names of every dep, out, metric and plot in dvc.yaml."""
    stages = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    names = set()
    for stage in stages.values():
        for kind in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                names.add(
                    PurePosixPath(entry if isinstance(entry, str) else next(iter(entry))).name
                )
    return names


def exists(word: str, tracked: set[str], outputs: set[str]) -> bool:
    """Tracked by git, written by a stage (inside a stage's out folder too), or the lock
    file DVC writes."""
    path = PurePosixPath(word)
    if word in tracked or word == "dvc.lock" or any(t.startswith(word + "/") for t in tracked):
        return True
    return any(path == PurePosixPath(out) or path.is_relative_to(out) for out in outputs)


def test_the_extractors_find_what_they_should() -> None:
    text = (
        "Run `make run` then `make lint` (make it so); set `tune.n_trials` or train.lora.r (see "
        "`tasks/train.py`, `reports/metrics.json`, `params.yaml`, `tasks.train`, "
        "`models:/NAME@alias`, `data/external/NAME`); `finetune predict`, not finetune it."
        "\n```\nfinetune tune\n```\n"
    )
    assert named_make_targets(text) == {"run", "lint"}
    assert named_params_keys(text) == {"tune.n_trials", "train.lora.r"}
    assert named_paths(text) == {"tasks/train.py", "reports/metrics.json", "params.yaml"}
    assert named_commands(text) == {"predict", "tune"}
    diagram = "\n## Stages\n\n```\n└ reports/metrics.json, confusion.csv/.png\n```\n## Next"
    assert stage_tree_files(diagram) == {"metrics.json", "confusion.csv", "confusion.png"}


def test_make_targets_named_in_the_readme_exist() -> None:
    named = named_make_targets(README)
    assert {"run", "test", "ui"} <= named  # the extractor reads the README
    missing = sorted(named - make_targets())
    assert not missing, f"README names make targets the Makefile lacks: {missing}"


def test_params_keys_named_in_the_readme_exist() -> None:
    keys = all_keys()
    paths = {key.path for key in keys}
    leaves = {key.path for key in keys if not key.section}
    named = named_params_keys(README)
    assert {"register.min_score", "tune.enabled"} <= named
    unknown = sorted(word for word in named if not known_key(word, paths, leaves))
    assert not unknown, f"README names params keys tasks/core/config.py lacks: {unknown}"


def test_files_named_in_the_readme_exist() -> None:
    tracked = set(
        subprocess.run(
            ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True
        ).stdout.split()
    )
    named = named_paths(README)
    assert {"dvc.yaml", "tasks/core/config.py", "reports/metrics.json"} <= named
    missing = sorted(word for word in named if not exists(word, tracked, declared_outputs()))
    assert not missing, (
        f"README names files that are neither in git nor written by a stage: {missing}"
    )


def test_files_in_the_stage_diagram_are_the_stages_files() -> None:
    named = stage_tree_files(README)
    assert {"metrics.json", "registry.json", "confusion.csv"} <= named
    missing = sorted(named - dvc_file_names())
    assert not missing, f"the Stages diagram names files dvc.yaml does not: {missing}"


def named_commands(text: str) -> set[str]:
    return set(re.findall(r"\bfinetune ([a-z][a-z-]*)", code(text)))


def test_finetune_commands_named_in_the_readme_exist() -> None:
    commands = set(typer_command_names())
    named = named_commands(README)
    assert {"run", "predict", "params"} <= named
    missing = sorted(named - commands)
    assert not missing, f"README names finetune commands that do not exist: {missing}"


def typer_command_names() -> list[str]:
    import typer

    group = typer.main.get_command(app)
    return group.list_commands(None)


def test_readme_paths_are_relative_to_the_project() -> None:
    assert str(Path.home()) not in README and str(PROJECT_ROOT) not in README
