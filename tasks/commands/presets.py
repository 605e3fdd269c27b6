"""Ready-made configurations (``presets/NAME.yaml``), each run as a DVC experiment.

A preset file holds ``params:``, dotted params keys whose values replace those keys (as
``dvc exp run -S key=value``), and optionally ``imports:``, data (or models) brought into
``data/external/NAME`` (``models/pretrained/NAME``) once, when missing
(``dvc import-url SOURCE TARGET``, SOURCE relative to the project).

Running a preset never writes ``params.yaml``: the pipeline runs as experiment NAME (NAME-2,
... when taken) in a temporary copy of the workspace (see tasks/commands/experiments.py); ``dvc exp
show`` lists it and ``dvc exp apply NAME`` brings its results into the workspace.

    python -m tasks.commands.presets conll2003          # make run PRESET=conll2003 runs this
    python -m tasks.commands.presets conll2003 --stage validate   # only up to validate
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
import yaml

from tasks.commands.experiments import check_imports, run_experiment
from tasks.core.cli import stage_command
from tasks.core.config import ParamsError
from tasks.core.environment import PROJECT_ROOT

PRESETS_DIR = PROJECT_ROOT / "presets"
SECTIONS = ("params", "imports")
app = typer.Typer(add_completion=False, help=__doc__)


@dataclass
class Preset:
    """A preset file: its dotted params overrides and the data folders it imports."""

    name: str
    params: dict[str, Any]
    imports: dict[str, str] = field(default_factory=dict)


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets shipped in ``presets_dir``."""
    return sorted(path.stem for path in presets_dir.glob("*.yaml"))


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> Preset:
    """Read preset ``name`` (its params are validated when it runs, against params.yaml).

    Raises:
        ParamsError: unknown preset, or a file without a ``params:`` mapping of dotted keys.
    """
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets(presets_dir)) or "none"
        raise ParamsError(f"unknown preset {name!r} (presets in {presets_dir}: {known})")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) - set(SECTIONS) or "params" not in document:
        raise ParamsError(
            f"{path}: expected a 'params:' mapping of dotted params keys to values "
            "and optionally 'imports:' (data/external/NAME: SOURCE)"
        )
    params, imports = document["params"] or {}, document.get("imports") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ParamsError(f"{path}: params: expected a mapping of dotted params keys to values")
    if not isinstance(imports, dict):
        raise ParamsError(f"{path}: imports: expected a mapping of TARGET: SOURCE")
    check_imports(imports, str(path))
    return Preset(name, params, {str(k): v for k, v in imports.items()})


@app.command()
@stage_command("preset")
def main(
    name: str = typer.Argument(..., help="preset name: a file presets/NAME.yaml"),
    stage: list[str] = typer.Option(
        [], "--stage", "-s", help="run only up to this stage (repeatable); default all"
    ),
    experiment: str = typer.Option(None, help="experiment name (default: the preset's)"),
    project: Path = typer.Option(PROJECT_ROOT, help="the project (a git + DVC repository)"),
) -> None:
    """Run preset NAME as a DVC experiment; params.yaml and dvc.lock stay as they are."""
    preset = load_preset(name, project / "presets")
    done = run_experiment(
        project, preset.params, experiment or name, targets=stage, imports=preset.imports
    )
    print(
        f"\npreset {name}: experiment '{done.name}' done in {done.seconds:.0f} s "
        f"(baseline {done.baseline[:7]}); params.yaml and dvc.lock are unchanged.\n"
        f"{done.how_to_use()}"
    )


if __name__ == "__main__":
    app()
