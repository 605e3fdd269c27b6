"""Predict with a registered model (the champion by default).

    python -m tasks.commands.predict "A moving, beautifully acted film."
    python -m tasks.commands.predict --file texts.txt --json      # progress on stderr
    finetune predict --model-uri models:/rotten_tomatoes-text-classifier@challenger "..."
    python -m tasks.commands.predict --quantize --file texts.txt   # int8 dynamic quantization, CPU

The version is verified and run by this project's code, never by code from the registry
(tasks/core/registration/verified.py). Entities come with their span ``[start:end]`` and
``word`` = ``text[start:end]`` (``tasks.core.entity_pipeline.EntityPipeline``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.commands.quantize import quantize_model
from tasks.core.cli import ParamsPath, stage_command, user_help
from tasks.core.config import DEFAULT_PARAMS, load_params
from tasks.core.entity_pipeline import EntityPipeline
from tasks.core.errors import StageError
from tasks.core.progress import Progress
from tasks.core.registration.verified import VerifiedModel, load_verified, verified_model

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


CHUNK = 256  # texts per model call with --file: progress and output advance per chunk


def predict(
    model_uri: str, texts: list[str], quantize: bool = False, tracking_uri: str | None = None
) -> list[dict[str, Any]]:
    """One record per text: ``{text, label, score}`` or ``{text, entities: [...]}``."""
    return list(predict_chunks(model_uri, texts, quantize=quantize, tracking_uri=tracking_uri))


def predict_chunks(
    model_uri: str,
    texts: list[str],
    progress: bool = False,
    quantize: bool = False,
    tracking_uri: str | None = None,
) -> Iterator[dict[str, Any]]:
    """The records of :func:`predict`, :data:`CHUNK` texts per call, with progress if asked."""
    predictor = Predictor(load_model(model_uri, tracking_uri), quantize=quantize)
    reporter = Progress(len(texts), "predict", unit="text") if progress else None
    for start in range(0, len(texts), CHUNK):
        chunk = texts[start : start + CHUNK]
        yield from records(chunk, predictor(chunk))
        if reporter is not None:
            reporter.update(advance=len(chunk))
    if reporter is not None:
        reporter.close()


def load_model(model_uri: str, tracking_uri: str | None = None) -> VerifiedModel:
    """The version at ``model_uri``, downloaded and verified; a missing model or alias raises
    StageError saying why and what to run."""
    import mlflow

    try:
        return verified_model(model_uri, tracking_uri or mlflow.get_registry_uri())
    except StageError:
        hint = registry_hint(model_uri)
        if hint:
            raise StageError(hint) from None
        raise


class Predictor:
    """A verified model run by this project's code (optionally int8-quantized); called on
    texts it gives ``{label, score}`` or a list of entities per text."""

    def __init__(self, verified: VerifiedModel, quantize: bool = False):
        self.task = verified.task
        self.model, self.tokenizer = load_verified(verified)
        if quantize:
            self.model = quantize_model(self.model)

    def __call__(self, texts: list[str]) -> list[Any]:
        if self.task == "token_classification":
            return EntityPipeline.entities_of(self.model, self.tokenizer, texts)
        return classify(self.model, self.tokenizer, texts)


def classify(model: Any, tokenizer: Any, texts: list[str], batch: int = 32) -> list[dict]:
    """``{label, score}`` per text (as transformers' pipeline), batches sorted by length."""
    import torch

    window = min(tokenizer.model_max_length, getattr(model.config, "max_position_embeddings",
                                                     512), 512)  # fmt: skip
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    found: list[dict[str, Any]] = [{} for _ in texts]
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        encoding = tokenizer([texts[i] for i in rows], padding=True, truncation=True,
                             max_length=window, return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            scores, labels = torch.softmax(model(**encoding).logits.float(), dim=-1).max(dim=-1)
        for row, score, label in zip(rows, scores.tolist(), labels.tolist(), strict=True):
            found[row] = {"label": model.config.id2label[label], "score": score}
    return found


def records(texts: list[str], output: list[Any]) -> list[dict[str, Any]]:
    """The model's ``output`` for ``texts`` (a :class:`Predictor`'s) as one record per text."""
    if output and isinstance(output[0], dict):
        return [
            {"text": t, "label": r["label"], "score": float(r["score"])}
            for t, r in zip(texts, output, strict=True)
        ]
    return [{"text": t, "entities": list(found)} for t, found in zip(texts, output, strict=True)]


def registry_hint(model_uri: str) -> str | None:
    """Why ``models:/NAME@alias`` cannot be loaded and what to do; None when it can."""
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
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify.")] = None,
    file: Annotated[Path | None, typer.Option(help="A file with one text per line.")] = None,
    model_uri: Annotated[
        str | None,
        typer.Option(
            help="Model to use (default: models:/<register.model_name>@champion; "
            "auto: {data}-{task})."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    quantize: Annotated[
        bool,
        typer.Option(
            help="Run int8 dynamic-quantized on the CPU (faster; see docs/user-guide.md)."
        ),
    ] = False,
    params_path: ParamsPath = DEFAULT_PARAMS,
) -> None:
    """Print predictions of the champion (or --model-uri) for the given texts."""
    from tasks.core import tracking

    params = load_params(params_path)
    store = tracking.use_store(params)
    uri = model_uri or f"models:/{tracking.registered_model_name(params)}@champion"
    texts = load_texts(texts or [], file)
    chunks = predict_chunks(uri, texts, file is not None, quantize, tracking_uri=store)
    for record in chunks:
        typer.echo(json.dumps(record, ensure_ascii=False) if as_json else render(record))


if __name__ == "__main__":
    app()
