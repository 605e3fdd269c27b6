"""Predict with a registered model (the champion by default).

    python -m tasks.commands.predict "A moving, beautifully acted film."
    python -m tasks.commands.predict --file texts.txt --json      # progress on stderr
    finetune predict --model-uri models:/rotten_tomatoes-text-classifier@challenger "..."
    python -m tasks.commands.predict --quantize --file texts.txt   # int8 dynamic quantization, CPU

Text classification prints the label and its score per text; token classification prints
each entity with its type, score, character span ``[start:end]`` and ``word``, which is
``text[start:end]``: the words as the text has them (case, accents, spacing), whatever the
tokenizer did to them (see ``tasks.core.entity_pipeline.EntityPipeline``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from tasks.core.cli import stage_command, user_help
from tasks.core.config import DEFAULT_PARAMS, load_params
from tasks.core.errors import StageError
from tasks.core.progress import Progress

app = typer.Typer(add_completion=False, help=user_help(__doc__))


def load_texts(texts: list[str], file: Path | None) -> list[str]:
    """The texts from the command line and/or one per non-blank line of ``file``."""
    collected = list(texts)
    if file is not None:
        if not file.is_file():
            raise StageError(f"{file}: file not found (--file)")
        collected += [
            line for line in file.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
    if not collected:
        raise StageError("no text given: pass texts as arguments or --file with one per line")
    return collected


# Texts per model call with --file: the progress (on stderr) and the output advance per chunk.
CHUNK = 256


def predict(model_uri: str, texts: list[str], quantize: bool = False) -> list[dict[str, Any]]:
    """One record per text: ``{text, label, score}`` or ``{text, entities: [...]}``; with
    ``quantize``, by the model's int8 dynamic-quantized copy (tasks/commands/quantize.py)."""
    return list(predict_chunks(model_uri, texts, quantize=quantize))


def predict_chunks(
    model_uri: str, texts: list[str], progress: bool = False, quantize: bool = False
) -> Iterator[dict[str, Any]]:
    """The records of :func:`predict`, :data:`CHUNK` texts per model call, reporting
    texts done, rate and ETA (``tasks.core.progress``) when ``progress`` is set."""
    model = load_model(model_uri)
    if quantize:
        from tasks.commands.quantize import quantize_loaded

        quantize_loaded(model)
    reporter = Progress(len(texts), "predict", unit="text") if progress else None
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        yield from records(chunk, model.predict(chunk))
        if reporter is not None:
            reporter.update(advance=len(chunk))
    if reporter is not None:
        reporter.close()


def load_model(model_uri: str) -> Any:
    """The pyfunc model at ``model_uri``; a missing model or alias says why and what to run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        hint = registry_hint(model_uri)
        raise StageError(hint or f"{model_uri}: cannot load the model: {exc.message}") from None


def records(texts: list[str], output: Any) -> list[dict[str, Any]]:
    """The model's ``output`` for ``texts`` as one record per text."""
    if hasattr(output, "to_dict"):  # text classification: a frame of label and score
        rows = output.to_dict("records")
        return [
            {"text": t, "label": r["label"], "score": float(r["score"])}
            for t, r in zip(texts, rows, strict=True)
        ]
    return [{"text": t, "entities": list(found)} for t, found in zip(texts, output, strict=True)]


def registry_hint(model_uri: str) -> str | None:
    """Why ``models:/NAME@alias`` cannot be loaded and what to do: the model or the alias
    is missing (with the aliases that exist and the gate's reason for the latest version)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if not model_uri.startswith("models:/") or "@" not in model_uri:
        return None
    name, alias = model_uri.removeprefix("models:/").split("@", 1)
    client = mlflow.MlflowClient()
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        return (
            f"{model_uri}: no registered model {name!r} in {mlflow.get_registry_uri()}: run the "
            "pipeline first (`finetune run`, `make run` or `dvc repro`), or pass --model-uri"
        )
    if alias in registered.aliases:
        return None
    aliases = ", ".join(f"@{a} (v{v})" for a, v in sorted(registered.aliases.items()))
    lines = [f"{model_uri}: {name!r} has no @{alias} version (aliases: {aliases or 'none'})."]
    versions = client.search_model_versions(f"name = '{name}'", order_by=["version_number DESC"])
    if versions:
        latest = versions[0]
        decision = latest.tags.get("decision", "registered")
        reason = latest.tags.get("reason", "")
        lines.append(f"The latest, v{latest.version}, was {decision}: {reason}".rstrip(": "))
    if registered.aliases:
        other = sorted(registered.aliases)[0]
        lines.append(f"Use it anyway: --model-uri models:/{name}@{other}")
    lines.append(
        "A first model becomes champion only if it reaches register.min_score; lower it in "
        "params.yaml or train a better model, then run `finetune run` (or `dvc repro`)."
    )
    return " ".join(lines)


def render(record: dict[str, Any]) -> str:
    if "label" in record:
        return f"{record['label']}\t{record['score']:.3f}\t{record['text']}"
    spans = [
        f"  {e['entity']}\t{e['score']:.3f}\t[{e['start']}:{e['end']}]\t{e['word']}"
        for e in record["entities"]
    ]
    return "\n".join([record["text"], *(spans or ["  (no entities)"])])


@app.command()
@stage_command("predict")
def main(
    texts: list[str] = typer.Argument(None, help="Texts to classify."),
    file: Path | None = typer.Option(None, help="A file with one text per line."),
    model_uri: str | None = typer.Option(
        None,
        help="Model to use (default: models:/<register.model_name>@champion; auto: {data}-{task}).",
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    quantize: bool = typer.Option(
        False, help="Run int8 dynamic-quantized on the CPU (faster; see docs/user-guide.md)."
    ),
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
) -> None:
    """Print predictions of the champion (or --model-uri) for the given texts."""
    from tasks.core import tracking

    params = load_params(params_path)
    tracking.use_store(params)
    uri = model_uri or f"models:/{tracking.registered_model_name(params)}@champion"
    for record in predict_chunks(
        uri, load_texts(texts or [], file), progress=file is not None, quantize=quantize
    ):
        typer.echo(json.dumps(record, ensure_ascii=False) if as_json else render(record))


if __name__ == "__main__":
    app()
