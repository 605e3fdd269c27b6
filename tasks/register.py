"""Stage ``register``: log the trained model to MLflow, register it, and gate the champion.

The new version always gets the alias ``challenger``. It becomes ``champion`` only if its
test score beats the current champion's by at least ``register.min_improvement``, both
scored on the same test data: when the champion was scored on another version of the test
split, it is re-scored on the current one first (tokenize + evaluate, exactly as the stages
do). With no champion yet, the version is promoted if it reaches ``register.min_score``.
Versions are never deleted or overwritten. Writes ``reports/registry.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import typer
from mlflow.pyfunc import PythonModel

from tasks.cli import stage_command
from tasks.config import DEFAULT_PARAMS, Params, load_params
from tasks.environment import PROJECT_ROOT, STATE_DIR
from tasks.errors import StageError

log = logging.getLogger(__name__)
MODEL_DIR = PROJECT_ROOT / "models" / "model"
PREPARED_DIR = PROJECT_ROOT / "data" / "prepared"
REPORTS_DIR = PROJECT_ROOT / "reports"
INPUT_EXAMPLES = {
    "text_classification": ["A moving, beautifully acted film.", "Dull and far too long."],
    "token_classification": ["Alice flew from Paris to Berlin with Lufthansa."],
}

app = typer.Typer(add_completion=False, help=__doc__)


def metric_key(params: Params) -> str:
    """The key of ``register.metric`` in ``metrics.json`` (entity F1 is seqeval's micro F1)."""
    metric = params.register_.metric
    if metric == "auto":
        metric = "f1_macro" if params.task == "text_classification" else "entity_f1"
    return "f1_micro" if metric == "entity_f1" else metric


def test_data_hash(prepared_dir: Path) -> str:
    """md5 of the prepared test split: the identity of the data a score was measured on."""
    return hashlib.md5((prepared_dir / "test.parquet").read_bytes()).hexdigest()


def decide(
    score: float, champion_score: float | None, min_improvement: float, min_score: float
) -> tuple[bool, str]:
    """The promotion gate: (promote?, reason in words)."""
    if champion_score is None:
        if score >= min_score:
            return True, f"first model: {score:.4f} reaches min_score {min_score}"
        return False, f"first model: {score:.4f} is below min_score {min_score}"
    delta = score - champion_score
    if delta > 0 and delta >= min_improvement:
        return True, (
            f"beats the champion by {delta:+.4f} ({score:.4f} vs {champion_score:.4f}; "
            f"min_improvement {min_improvement})"
        )
    return False, (
        f"does not beat the champion by min_improvement {min_improvement} "
        f"({score:.4f} vs {champion_score:.4f}, {delta:+.4f})"
    )


def register(
    params: Params,
    model_dir: Path = MODEL_DIR,
    prepared_dir: Path = PREPARED_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Log and register ``model_dir``, apply the champion/challenger gate, write the report.

    Returns:
        The content of ``reports/registry.json``.
    """
    import mlflow

    from tasks import tracking
    from tasks.modeling import write_json

    metrics_path = Path(reports_dir) / "metrics.json"
    if not metrics_path.exists():
        raise StageError(f"{metrics_path}: not found; run the evaluate stage first")
    metrics = json.loads(metrics_path.read_text())
    key = metric_key(params)
    if key not in metrics:
        raise StageError(
            f"register.metric: {key!r} is not in {metrics_path} ({', '.join(metrics)})"
        )
    score = float(metrics[key])
    data_hash = test_data_hash(Path(prepared_dir))
    name = params.register_.model_name

    with tracking.stage_run(params, "register", state_dir) as run:
        client = mlflow.MlflowClient()
        champion = _champion(client, name, params.task)
        champion_score, rescored = None, False
        if champion is not None:
            tags = champion.tags
            same_data = tags.get("test_data_hash") == data_hash and tags.get("metric") == key
            if same_data:
                champion_score = float(tags["test_score"])
            else:
                log.info("champion v%s was scored on other test data: re-scoring", champion.version)
                champion_score = rescore(params, name, champion.version, prepared_dir, state_dir)[
                    key
                ]
                rescored = True
        promote, reason = decide(
            score, champion_score, params.register_.min_improvement, params.register_.min_score
        )
        version = _log_and_register(params, Path(model_dir), name)
        decision = "promoted to champion" if promote else "kept as challenger"
        version_tags = {
            "task": params.task,
            "metric": key,
            "test_score": f"{score:.6f}",
            "test_data_hash": data_hash,
            "decision": decision,
            "reason": reason,
            "champion_before": champion.version if champion else "none",
            "champion_score": "none" if champion_score is None else f"{champion_score:.6f}",
            "champion_rescored": str(rescored).lower(),
        }
        for tag, value in version_tags.items():
            client.set_model_version_tag(name, version, tag, value)
        client.set_registered_model_alias(name, "challenger", version)
        if promote:
            client.set_registered_model_alias(name, "champion", version)
        mlflow.log_metric(f"test_{key}", score)
        mlflow.set_tags({"registry.decision": decision, "registry.version": version})
        report = {
            "model_name": name,
            "version": int(version),
            "model_uri": f"models:/{name}/{version}",
            "run_id": run.info.run_id,
            "metric": key,
            "score": score,
            "test_data_hash": data_hash,
            "champion_before": None
            if champion is None
            else {"version": int(champion.version), "score": champion_score, "rescored": rescored},
            "promoted": promote,
            "decision": decision,
            "reason": reason,
            "aliases": _aliases(client, name),
        }
        write_json(Path(reports_dir) / "registry.json", report)
        mlflow.log_artifact(str(Path(reports_dir) / "registry.json"), artifact_path="reports")
    log.info("%s version %s %s: %s", name, version, decision, reason)
    return report


def rescore(
    params: Params, name: str, version: str, prepared_dir: Path, state_dir: Path
) -> dict[str, Any]:
    """Score a registered version on the current test split with the stages' own code."""
    from tasks.evaluate import evaluate
    from tasks.modeling import load_tokenizer, model_class, resolve_model_source
    from tasks.tokenize import tokenize

    source = resolve_model_source(f"models:/{name}/{version}", params.tracking.uri, state_dir)
    with tempfile.TemporaryDirectory(dir=state_dir, prefix=".rescore-") as tmp:
        work = Path(tmp)
        # One folder with weights and tokenizer, as the train stage saves a model.
        model_class(params.task).from_pretrained(source.model_dir).save_pretrained(work / "model")
        load_tokenizer(source).save_pretrained(work / "model")
        update = {"model": params.model.model_copy(update={"name_or_path": str(work / "model")})}
        scoring = params.model_copy(update=update)
        tokenize(scoring, prepared_dir, work / "tokenized", work / "tokenize.json", state_dir)
        return evaluate(scoring, work / "tokenized", work / "model", work / "reports")


def _champion(client: Any, name: str, task: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    if version.tags.get("task", task) != task:
        raise StageError(
            f"register.model_name: {name!r} holds a {version.tags['task']} champion but task is "
            f"{task}; register this model under another name"
        )
    return version


def _log_and_register(params: Params, model_dir: Path, name: str) -> str:
    """Log the model into the active run with signature, input example and explicit
    requirements, register it under ``name``, and return the new version."""
    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

    if not (model_dir / "config.json").exists():
        raise StageError(f"{model_dir}: no trained model found; run the train stage first")
    example = INPUT_EXAMPLES[params.task]
    # Explicit requirements: MLflow's inference of them looks for torchvision and fails.
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
    ]
    if params.task == "text_classification":
        pipeline = transformers.pipeline("text-classification", model=str(model_dir), device="cpu")
        info = mlflow.transformers.log_model(  # the signature is inferred from the example
            transformers_model=pipeline,
            name="model",
            task="text-classification",
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=name,
        )
    else:
        # MLflow's transformers pyfunc collapses token-classification output into a
        # comma-joined string of entity types (no spans, no scores) and raises IndexError
        # on a text without entities; this wrapper serves the same aggregated pipeline but
        # returns every entity with its type, score and character span.
        pipeline = transformers.pipeline(
            "token-classification",
            model=str(model_dir),
            aggregation_strategy="simple",
            device="cpu",
        )
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=EntityPipeline(),
            artifacts={"model": str(model_dir)},
            signature=infer_signature(example, EntityPipeline.entities(pipeline, example)),
            input_example=example,
            pip_requirements=requirements,
            registered_model_name=name,
        )
    return str(info.registered_model_version)


class EntityPipeline(PythonModel):
    """Named entities with type, score and character span, from the fine-tuned token
    classifier saved by ``train`` (the ``model`` artifact)."""

    def load_context(self, context):
        import transformers

        self.pipeline = transformers.pipeline(
            "token-classification",
            model=context.artifacts["model"],
            aggregation_strategy="simple",
            device="cpu",
        )

    # No type hints here: MLflow would read them as an input schema.
    def predict(self, context, model_input, params=None):
        texts = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        return self.entities(self.pipeline, [str(t) for t in texts])

    @staticmethod
    def entities(pipeline: Any, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of ``{entity, score, word, start, end}``."""
        return [
            [
                {
                    "entity": found["entity_group"],
                    "score": round(float(found["score"]), 4),
                    "word": found["word"],
                    "start": int(found["start"]),
                    "end": int(found["end"]),
                }
                for found in text_entities
            ]
            for text_entities in pipeline(texts)
        ]


def _aliases(client: Any, name: str) -> dict[str, int]:
    from mlflow.exceptions import MlflowException

    found = {}
    for alias in ("champion", "challenger"):
        try:
            found[alias] = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            continue
    return found


@app.command()
@stage_command("register")
def main(
    params_path: Path = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read"),
    model_dir: Path = typer.Option(MODEL_DIR, help="the trained model"),
    prepared_dir: Path = typer.Option(PREPARED_DIR, help="the prepared splits (test is hashed)"),
    reports_dir: Path = typer.Option(REPORTS_DIR, help="metrics.json in, registry.json out"),
) -> None:
    """Register models/model and decide whether it becomes the champion."""
    register(load_params(params_path), model_dir, prepared_dir, reports_dir)


if __name__ == "__main__":
    app()
