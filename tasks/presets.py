"""Ready-made configurations (``presets/NAME.yaml``) written into ``params.yaml``.

A preset maps dotted params keys to values; each value replaces that key, as
``dvc exp run -S key=value`` would, and ``params.yaml`` keeps its comments. Everything is
validated with the typed params before the file is touched, so a bad preset changes nothing.

    python -m tasks.presets conll2003     # then: dvc repro   (make run PRESET=conll2003 does both)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from tasks.cli import stage_command
from tasks.config import DEFAULT_PARAMS, ParamsError, load_params
from tasks.environment import PROJECT_ROOT

PRESETS_DIR = PROJECT_ROOT / "presets"
app = typer.Typer(add_completion=False, help=__doc__)


def available_presets(presets_dir: Path = PRESETS_DIR) -> list[str]:
    """Names of the presets shipped in ``presets_dir``."""
    return sorted(path.stem for path in presets_dir.glob("*.yaml"))


def load_preset(name: str, presets_dir: Path = PRESETS_DIR) -> dict[str, Any]:
    """The dotted overrides of preset ``name``.

    Raises:
        ParamsError: unknown preset, or a file that is not a mapping of dotted keys.
    """
    path = presets_dir / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_presets(presets_dir)) or "none"
        raise ParamsError(f"unknown preset {name!r} (presets in {presets_dir}: {known})")
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
        raise ParamsError(f"{path}: expected a mapping of dotted params keys to values")
    return overrides


def write_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Validate ``overrides`` (dotted keys) with the typed params, then write them into
    ``params_file`` in place, keeping its comments, as ``dvc exp run -S`` does."""
    from dvc.utils.serialize import modify_yaml

    load_params(params_file, overrides)  # raises ParamsError naming the bad key, before work
    with modify_yaml(params_file) as document:
        for dotted, value in overrides.items():
            node = document
            *parents, leaf = dotted.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value


@app.command()
@stage_command("preset")
def main(
    name: str = typer.Argument(..., help="preset name: a file presets/NAME.yaml"),
    params_file: Path = typer.Option(DEFAULT_PARAMS, help="params file to write into"),
) -> None:
    """Write preset NAME into params.yaml (then run `dvc repro`)."""
    overrides = load_preset(name)
    write_overrides(params_file, overrides)
    keys = ", ".join(overrides)
    print(f"preset {name}: set {keys} in {params_file} (git checkout {params_file.name} undoes)")


if __name__ == "__main__":
    app()
