"""finetune: one command for the project's stages, pipeline, predictions, UIs and servers.

    finetune run                        # the whole pipeline (dvc repro): unchanged stages skipped
    finetune run --preset conll2003     # a ready-made configuration, as a DVC experiment
    finetune train --help               # a stage alone, with the params it reads
    finetune predict "A moving film."   # the champion's label
    finetune params                     # every params.yaml key: default and meaning
    finetune model pin ORG/NAME         # a Hugging Face Hub model, pinned to its commit

Each stage command is the stage's own module (``python -m tasks.train`` is the same command,
and what DVC runs), loaded when it is called, so ``finetune --help`` starts fast.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from tasks.commands import serving
from tasks.commands.paramsdoc import stage_help
from tasks.core.cli import ParamsPath, plain, reflow, stage_command, user_help
from tasks.core.config import DEFAULT_PARAMS
from tasks.core.environment import PROJECT_ROOT
from tasks.core.tracking import PIPELINE_RUN_ENV, end_execution, new_pipeline_id

# name -> (module whose Typer app is the command, help panel).
DELEGATED = {
    "prepare": ("tasks.prepare", "Stages"),
    "validate": ("tasks.validate", "Stages"),
    "tokenize": ("tasks.tokenize", "Stages"),
    "tune": ("tasks.tune", "Stages"),
    "train": ("tasks.train", "Stages"),
    "evaluate": ("tasks.evaluate", "Stages"),
    "register": ("tasks.register", "Stages"),
    "report": ("tasks.report", "Stages"),
    "predict": ("tasks.commands.predict", "Models"),
    "model": ("tasks.commands.models", "Models"),
    "ui": ("tasks.commands.ui", "Servers"),
    "deploy": ("flows.deploy", "Pipeline"),
    "servers": ("tasks.commands.servers", "Servers"),
    "sources": ("tasks.core.data.sources", "Pipeline"),
}
# Listing order; SUMMARIES: for modules whose docstring is not about their command line.
ORDER = [*list(DELEGATED)[:8], "run", "deploy", "sources", "model", "predict", "serve", "ui"]
ORDER += ["servers"]
SUMMARIES = {"sources": "The built-in datasets' download cache: fetch them once per checkout."}


def summary(module: str) -> str:
    """The first paragraph of ``module``'s docstring, read without importing it."""
    spec = importlib.util.find_spec(module)
    source = Path(spec.origin).read_text(encoding="utf-8") if spec and spec.origin else ""
    doc = ast.get_docstring(ast.parse(source)) or ""
    return plain(" ".join(doc.split("\n\n")[0].split()))


def load(name: str) -> click.Command:
    """The click command of ``finetune NAME``: the module's Typer app, plus a stage's params."""
    module = importlib.import_module(DELEGATED[name][0])
    command = typer.main.get_command(module.app)
    command.name = name
    params_help = stage_help(name)
    if params_help:
        command.help = f"{command.help}\n\n{params_help}"
    return command


class LazyGroup(TyperGroup):
    """Gap: click and Typer import every subcommand to list it; the stage modules import
    transformers, MLflow and Prefect (seconds each). Listed here from their docstrings,
    imported only when one is run or asked for its ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, (module, panel) in DELEGATED.items():
            text = SUMMARIES.get(name) or summary(module)
            stub = click.Command(name, short_help=text, help=text)
            stub.rich_help_panel = panel
            self.commands[name] = stub

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name = args[0] if args else None
        if name in DELEGATED and not getattr(self.commands[name], "loaded", False):
            command = load(name)
            command.loaded = True
            command.rich_help_panel = DELEGATED[name][1]
            self.commands[name] = command
        return super().resolve_command(ctx, args)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self.commands, key=lambda name: [*ORDER, name].index(name))


app = typer.Typer(
    cls=LazyGroup,
    add_completion=True,
    no_args_is_help=True,
    help=user_help(__doc__),
    context_settings={"help_option_names": ["-h", "--help"]},
)


def command(panel: str):
    """Register a command of this module, with its own docstring as help."""

    def decorate(func):
        doc = plain(reflow(inspect.cleandoc(func.__doc__ or "")))
        wrapped = stage_command(func.__name__)(func)
        wrapped.__doc__ = doc
        return app.command(rich_help_panel=panel)(wrapped)

    return decorate


@command("Pipeline")
def run(
    preset: Annotated[
        str | None,
        typer.Option(
            help="Run presets/NAME.yaml as a DVC experiment (params.yaml stays as it is)."
        ),
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="With --preset: your copy of its dataset (a folder), imported once."),
    ] = None,
    stage: Annotated[
        list[str],
        typer.Option("--stage", "-s", help="Run only up to this stage (repeatable); default all."),
    ] = (),
    flow: Annotated[
        bool,
        typer.Option(help="Run as the Prefect flow (flows/pipeline.py): retries, logs, artifacts."),
    ] = False,
) -> None:
    """Run the pipeline: every DVC stage in order, unchanged ones skipped (`dvc repro`)."""
    if data is not None and (flow or not preset):
        raise typer.BadParameter("--data goes with --preset (and without --flow)")
    if flow:
        from flows.pipeline import training_pipeline

        logging.getLogger("httpx").setLevel(logging.WARNING)
        training_pipeline(preset=preset, stages=stage or None)
    elif preset:
        from tasks.commands.presets import main as run_preset

        run_preset(preset, data=data, stage=stage, experiment=None, project=PROJECT_ROOT)
    else:
        dvc = Path(sys.executable).parent / "dvc"
        command = [str(dvc), "repro", *stage]
        execution = new_pipeline_id()  # the stages' MLflow parent run, ended here after them
        env = {**os.environ, PIPELINE_RUN_ENV: execution}
        code = subprocess.run(command, cwd=PROJECT_ROOT, env=env, check=False).returncode
        end_execution(PROJECT_ROOT, execution, code)
        raise typer.Exit(code)


@command("Models")
def serve(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1.")] = 5001,
    model_uri: Annotated[
        str | None,
        typer.Option(help="Model to serve (default: models:/<register.model_name>@champion)."),
    ] = None,
    params_path: ParamsPath = DEFAULT_PARAMS,
    max_request_bytes: Annotated[
        int, typer.Option(min=1, help="Larger POST bodies are refused (413).")
    ] = serving.MAX_BYTES,
    max_batch: Annotated[
        int, typer.Option(min=1, help="Requests with more inputs are refused (413).")
    ] = serving.MAX_BATCH,
) -> None:
    """Serve the champion (or --model-uri) over REST: POST /invocations {"inputs": [...]}.

    MLflow's own scoring server (the routes and formats of `mlflow models serve`) behind
    request limits (tasks/commands/serving.py), reading the registry at tracking.uri, else
    MLFLOW_TRACKING_URI, else the project's store. Only a verified version is served, run
    by this checkout's code (tasks/core/registration/verified.py): nothing from the registry
    executes.
    """
    from tasks.commands.predict import registry_hint
    from tasks.core import tracking
    from tasks.core.config import load_params
    from tasks.core.errors import StageError

    params = load_params(params_path)
    uri = tracking.use_store(params)
    model = model_uri or f"models:/{tracking.registered_model_name(params)}@champion"
    hint = registry_hint(model)
    if hint:
        raise StageError(hint)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    serving.serve(model, port, max_request_bytes, max_batch, uri)


@command("Parameters")
def params(
    schema: Annotated[bool, typer.Option("--schema", help="Write params.schema.json.")] = False,
    check: Annotated[
        bool,
        typer.Option("--check", help="Fail unless params.yaml has every key, default and comment."),
    ] = False,
    params_path: Annotated[
        Path, typer.Option("--params", help="params.yaml to check")
    ] = DEFAULT_PARAMS,
) -> None:
    """Every params.yaml key with its default and meaning (from tasks/core/config.py)."""
    from tasks.commands import paramsdoc

    paramsdoc.main(as_schema=schema, as_check=check, params=params_path)


def main() -> None:
    """Entry point of the ``finetune`` console script."""
    app(prog_name="finetune")


if __name__ == "__main__":
    main()
