"""Ready-made configurations (``presets/NAME.yaml``), each run as a DVC experiment on your copy
of its dataset.

A preset file holds ``params:`` (dotted keys and values) and ``data:`` (the ``files:`` your
copy must hold, their ``format:``). ``--data PATH`` imports PATH into ``data/external/NAME``
(``dvc import-url``; the ``.dvc`` record stays uncommitted); later runs reuse it. A preset
never writes ``params.yaml`` (tasks/commands/experiments.py).

    finetune run --preset conll2003 --data /path/to/conll2003    # make run PRESET=... DATA=...
    python -m tasks.commands.presets conll2003 --stage validate   # only up to validate
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from tasks.commands.experiments import run_experiment
from tasks.core.cli import stage_command, user_help
from tasks.core.config import ParamsError
from tasks.core.environment import PROJECT_ROOT
from tasks.core.paths import EXTERNAL_DATA_DIR
from tasks.core.tracking import PIPELINE_RUN_ENV, end_execution, new_pipeline_id

PRESETS_DIR = PROJECT_ROOT / "presets"
SECTIONS = ("params", "data")
# A preset name becomes a file name and a data folder: nothing that can leave presets/.
PRESET_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
app = typer.Typer(add_completion=False, help=user_help(__doc__))


@dataclass
class Preset:
    """A preset file: its dotted params overrides and the data files it needs."""

    name: str
    params: dict[str, Any]
    files: list[str]
    format: str

    @property
    def target(self) -> str:
        """Where the preset's data is imported, relative to the project."""
        return f"{EXTERNAL_DATA_DIR.as_posix()}/{self.name}"

    def needs(self) -> str:
        """One line: the files the preset needs and how to give them."""
        return (
            f"preset {self.name} needs a folder with {', '.join(self.files)} ({self.format}): "
            f"finetune run --preset {self.name} --data PATH "
            f"(make run PRESET={self.name} DATA=PATH)"
        )

    def data_imports(self, project: Path, data: Path | None = None) -> dict[str, str]:
        """``{target: source}`` for :func:`run_experiment`: ``data`` (checked to hold every
        file), or nothing when an earlier import holds every file; ParamsError otherwise."""
        folder = Path(data).expanduser().resolve() if data is not None else project / self.target
        if data is None and not folder.is_dir():
            raise ParamsError(self.needs())
        missing = [name for name in self.files if not (folder / name).is_file()]
        if missing:
            raise ParamsError(f"{folder} lacks {', '.join(missing)}; {self.needs()}")
        return {self.target: str(folder)} if data is not None else {}


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    return sorted(path.stem for path in presets_dir.glob("*.yaml"))


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Read preset ``name`` (params validated when it runs); ParamsError for a bad or unknown
    name or a file without ``params:`` and ``data:`` (``files``, ``format``) mappings."""
    known = ", ".join(available_presets(presets_dir)) or "none"
    if not PRESET_NAME.match(name):
        raise ParamsError(f"preset {name!r}: a name is letters, digits, - and _ (known: {known})")
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        raise ParamsError(f"unknown preset {name!r} (presets in {presets_dir}: {known})")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != set(SECTIONS):
        raise ParamsError(
            f"{path}: expected a 'params:' mapping of dotted params keys to values and a "
            "'data:' mapping with 'files:' (the file names your copy holds) and 'format:'"
        )
    params, data = document["params"] or {}, document["data"] or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ParamsError(f"{path}: params: expected a mapping of dotted params keys to values")
    files = data.get("files") if isinstance(data, dict) else None
    if not files or not all(isinstance(f, str) and Path(f).name == f != ".." for f in files):
        raise ParamsError(f"{path}: data: files: expected a list of file names, got {files!r}")
    return Preset(name, params, list(files), " ".join(str(data.get("format", "")).split()))


@app.command()
@stage_command("preset")
def main(
    name: Annotated[str, typer.Argument(help="preset name: a file presets/NAME.yaml")],
    data: Annotated[
        Path | None,
        typer.Option(help="your copy of the preset's dataset (a folder), imported once with DVC"),
    ] = None,
    stage: Annotated[
        list[str],
        typer.Option("--stage", "-s", help="run only up to this stage (repeatable); default all"),
    ] = (),
    experiment: Annotated[
        str | None, typer.Option(help="experiment name (default: the preset's)")
    ] = None,
    project: Annotated[
        Path, typer.Option(help="the project (a git + DVC repository)")
    ] = PROJECT_ROOT,
) -> None:
    """Run preset NAME as a DVC experiment; params.yaml and dvc.lock stay as they are."""
    preset = load_preset(name, project / "presets")
    imports = preset.data_imports(project, data)
    execution = new_pipeline_id()  # the stages' MLflow parent run, ended here after them
    returncode = 1
    try:
        done = run_experiment(
            project,
            preset.params,
            experiment or name,
            targets=stage,
            imports=imports,
            env={PIPELINE_RUN_ENV: execution},
        )
        returncode = 0
    finally:
        end_execution(project, execution, returncode)
    print(
        f"\npreset {name}: experiment '{done.name}' done in {done.seconds:.0f} s "
        f"(baseline {done.baseline[:7]}); params.yaml and dvc.lock are unchanged.\n"
        f"{done.how_to_use()}"
    )


if __name__ == "__main__":
    app()
