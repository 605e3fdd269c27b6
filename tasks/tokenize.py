"""Stage ``tokenize``: turn the prepared splits into model inputs with the model's tokenizer.

Reads ``task``, ``model.name_or_path``, ``model.revision``, ``tracking.uri`` and ``tokenize``
from ``params.yaml`` and ``data/prepared/*.parquet``. Writes ``data/tokenized/`` (an unpadded
dataset per split, ``manifest.json``) and ``reports/tokenize.json`` (counts, DVC metrics).
Truncation is counted, never silent; words cut off above ``tokenize.max_unpredicted_share``
of validation or test fail the stage. ``max_length: auto``: docs/reproducibility.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tasks.core import tracking
from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS
from tasks.core.data.tokenizing import REPORT_PATH, tokenize
from tasks.core.environment import STATE_DIR
from tasks.core.paths import PREPARED_DIR, TOKENIZED_DIR

app = typer.Typer(add_completion=False, help=user_help(__doc__))


@app.command()
@stage_command("tokenize")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    prepared_dir: Annotated[Path, typer.Option(help="prepared parquet splits")] = PREPARED_DIR,
    output_dir: Annotated[
        Path, typer.Option(help="where the tokenized datasets go")
    ] = TOKENIZED_DIR,
    report_path: Annotated[Path, typer.Option("--report", help="DVC metrics file")] = REPORT_PATH,
    state_dir: Annotated[Path, typer.Option(help="cache for registered models")] = STATE_DIR,
) -> None:
    """Tokenize data/prepared into data/tokenized (see the module docstring)."""
    params = stage_params(params_path, "tokenize")  # checked: inputs tracked by DVC
    # The first stage that logs: it opens the pipeline's parent run.
    with tracking.stage_run(params, "tokenize", state_dir):
        tracking.log_numbers(tokenize(params, prepared_dir, output_dir, report_path, state_dir))


if __name__ == "__main__":
    app()
