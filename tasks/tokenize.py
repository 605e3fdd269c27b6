"""Stage ``tokenize``: turn the prepared splits into model inputs with the model's tokenizer.

Reads ``task``, ``model.name_or_path`` and ``model.revision``, ``tracking.uri`` and ``tokenize``
from ``params.yaml`` and ``data/prepared/{train,validation,test}.parquet``. Writes
``data/tokenized/`` (one Hugging Face dataset per split, unpadded: batches are padded when
they are made) with
``manifest.json`` (tokenizer identity, label map, counts, truncation, token lengths), and
``reports/tokenize.json`` (the counts, as DVC metrics).

Text classification: each text is truncated to ``tokenize.max_length`` sub-tokens.
Token classification: words are split into sub-tokens; each word's tag goes on its first
sub-token, ``-100`` (ignored by the loss) on the others and on special tokens. Examples
longer than ``max_length`` are truncated and counted, never silently; words cut off are
counted per split, and above ``tokenize.max_unpredicted_share`` of validation or test the
stage fails. ``max_length: auto`` (the default) is the 99.9th percentile of train's
sub-token lengths (text) or the longest (token tasks: a cut word is never predicted),
rounded up to a multiple of 8, capped at the encoder's limit; the choice and its reason are
in the manifest (``max_length_choice``). ``tokenize.context_tokens`` (token task): each
sentence is encoded with its document's neighbouring sentences as unlabelled context
(``tasks.core.data.context``).
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
    # The first stage that logs: it opens the pipeline's parent run, RUNNING from here on.
    with tracking.stage_run(params, "tokenize", state_dir):
        tracking.log_numbers(tokenize(params, prepared_dir, output_dir, report_path, state_dir))


if __name__ == "__main__":
    app()
