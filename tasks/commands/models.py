"""Start-point models: pin a Hugging Face Hub model to a commit, fetch a built-in encoder.

finetune model pin ORG/NAME                   # the commit main points at, into params.yaml
finetune model pin ORG/NAME --revision v1.0   # a branch or tag, resolved to its commit
finetune model fetch mpnet-base               # a built-in encoder into the download cache
finetune model rollback                       # the champion alias back to the one before
finetune model rollback --to 3                # or to version 3
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
import yaml

from tasks.commands.paramsdoc import key_lines
from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, user_help
from tasks.core.config import BUILTIN_ENCODERS, DEFAULT_PARAMS, Params, ParamsError, load_params
from tasks.core.errors import StageError
from tasks.core.pretrained.encoders import encoder_dir
from tasks.core.pretrained.hub import hub_endpoint, resolve_revision
from tasks.core.registration import registry
from tasks.core.tracked_inputs import is_hub_id

app = typer.Typer(add_completion=False, no_args_is_help=True, help=user_help(__doc__))


def _scalar(value: str) -> str:
    """``value`` as a YAML scalar that reads back as the same string (a sha of digits too)."""
    text = yaml.safe_dump(value, default_style=None).splitlines()[0]
    return text if yaml.safe_load(text) == value and not text[0].isdigit() else f'"{value}"'


def set_model_lines(text: str, name: str, revision: str) -> str:
    """``text`` (a params.yaml) with ``model.name_or_path`` and ``model.revision`` replaced on
    their own lines, every other line and comment kept; ParamsError without a block-style
    ``model.name_or_path`` line."""
    lines = text.splitlines(keepends=True)
    found = key_lines(text)
    if "model.name_or_path" not in found:
        raise ParamsError("params.yaml: no `model:` section with a `name_or_path:` line")
    line_of_name = found["model.name_or_path"][0] - 1
    indent = re.match(r" *", lines[line_of_name])[0]
    if "model.revision" in found:
        _replace_value(lines, found["model.revision"][0] - 1, _scalar(revision))
    else:
        comment = "  # the hub model's commit (finetune model pin writes it)\n"
        lines.insert(line_of_name + 1, f"{indent}revision: {_scalar(revision)}{comment}")
    _replace_value(lines, line_of_name, _scalar(name))
    return "".join(lines)


def _replace_value(lines: list[str], index: int, value: str) -> None:
    """Put ``value`` after ``lines[index]``'s key, keeping a trailing comment at its column."""
    match = re.match(
        r"^(?P<key> *[\w-]+:)(?P<old>[^#\n]*?)(?P<gap> *)(?P<comment>#.*)?$",
        lines[index].rstrip("\n"),
    )
    head = f"{match['key']} {value}"
    comment = match["comment"]
    if comment:
        column = len(match["key"]) + len(match["old"]) + len(match["gap"])
        head = head.ljust(column) if len(head) < column else head + "  "
        head += comment
    lines[index] = head + "\n"


@app.command()
@stage_command("model pin")
def pin(
    name: Annotated[str, typer.Argument(help="The hub model id, NAME or ORG/NAME.")],
    revision: Annotated[
        str | None,
        typer.Option(help="A branch, tag or commit of it (default: main), resolved to its commit."),
    ] = None,
    params_path: Annotated[
        Path, typer.Option("--params", help="params.yaml to edit")
    ] = DEFAULT_PARAMS,
) -> None:
    """Pin a Hugging Face Hub model: write NAME and the commit sha its revision points at now
    into params.yaml (model.name_or_path, model.revision), comments kept.

    Asks the hub at HF_ENDPOINT (default https://huggingface.co); the first stage that needs
    the model downloads that commit once into .state/hf, later runs read it from there.
    """
    if name in BUILTIN_ENCODERS or not is_hub_id(name):
        raise ParamsError(f"{name!r} is not a hub model id (NAME or ORG/NAME): nothing to pin")
    sha = resolve_revision(name, revision)
    text = params_path.read_text(encoding="utf-8")
    params_path.write_text(set_model_lines(text, name, sha), encoding="utf-8")
    load_params(params_path)  # the edited file must still be valid
    print(
        f"{params_path.name}: model.name_or_path: {name}, model.revision: {sha} "
        f"({revision or 'main'} at {hub_endpoint()})"
    )


@app.command()
@stage_command("model fetch")
def fetch(
    name: Annotated[
        str, typer.Argument(help=f"A built-in encoder: {', '.join(BUILTIN_ENCODERS)}.")
    ],
) -> None:
    """Fetch a built-in encoder into the download cache ahead of time (sha256-checked)."""
    if name not in BUILTIN_ENCODERS:
        raise ParamsError(f"{name!r} is not a built-in encoder ({', '.join(BUILTIN_ENCODERS)})")
    print(f"{name}: {encoder_dir(name)}")


def roll_back(params: Params, to: int | None = None) -> tuple[str, str]:
    """Move the ``champion`` alias to version ``to``, else to the current one's
    ``champion_before``; tag it ``rolled_back_from``; return (from, to). StageError: no
    champion, no earlier champion and no ``to``, or no such version."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking.use_store(params)
    client, name = mlflow.MlflowClient(), tracking.registered_model_name(params)
    current = registry.champion(client, name, params.task)
    if current is None:
        raise StageError(f"{name}: no champion to roll back (register a model first)")
    target = str(to) if to is not None else current.tags.get("champion_before", "none")
    if target == "none":
        raise StageError(
            f"{name}: v{current.version} was the first champion; name a version with --to"
        )
    try:
        client.get_model_version(name, target)
    except MlflowException:
        raise StageError(f"{name}: no version {target} (finetune model rollback --to N)") from None
    client.set_registered_model_alias(name, "champion", target)
    client.set_model_version_tag(name, target, "rolled_back_from", current.version)
    return str(current.version), target


@app.command()
@stage_command("model rollback")
def rollback(
    to: Annotated[
        int | None, typer.Option(help="Version to make champion (default: the one before).")
    ] = None,
    params_path: ParamsPath = DEFAULT_PARAMS,
) -> None:
    """Move the champion alias back: to the champion before the current one, or to --to N."""
    params = load_params(params_path)
    before, after = roll_back(params, to)
    name = tracking.registered_model_name(params)
    print(f"{name}: champion v{before} -> v{after} (predict and serve use it from now on)")


if __name__ == "__main__":
    app()
