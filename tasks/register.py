"""Stage ``register``: log the trained model to MLflow, register it, and gate the champion.

Registration is idempotent. Every version carries, as tags set in the same call that creates
it, DVC's md5 of the model directory (``model_md5``, the ``.dir`` hash ``dvc.lock`` records
for ``models/model``) and the md5 of the test split it was scored on (``test_data_hash``).
When a version with the current weights exists already, it is reused: nothing is logged or
registered again, the gate is re-applied to it, and its decision tags are updated.

The registered version of the current weights gets the alias ``challenger``. It becomes
``champion`` only if its test score beats the current champion's by at least
``register.min_improvement``, both scored on the same test data: when the champion was
scored on another version of the test split, it is re-scored on the current one first
(tokenize + evaluate, exactly as the stages do). With no champion yet, the version is
promoted if it reaches ``register.min_score``, or with ``auto`` (the default) if it beats the
trivial baseline on the same test split (the most frequent label, or no entities). A reused
version that is the champion stays champion (its aliases are left as they are). Versions
are never deleted or overwritten. Writes ``reports/registry.json`` atomically, last.
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

from tasks.core.cli import stage_command
from tasks.core.config import DEFAULT_PARAMS, Params, headline_metric, load_params
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.errors import StageError

log = logging.getLogger(__name__)
MODEL_DIR = PROJECT_ROOT / "models" / "model"
MODEL_MD5_TAG = "model_md5"  # DVC's md5 of the model directory: the identity of the weights
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
        return headline_metric(params.task)
    return "f1_micro" if metric == "entity_f1" else metric


def test_data_hash(prepared_dir: Path) -> str:
    """md5 of the prepared test split: the identity of the data a score was measured on."""
    return hashlib.md5((prepared_dir / "test.parquet").read_bytes()).hexdigest()


def model_md5(model_dir: Path) -> str:
    """DVC's md5 of the model directory: the ``.dir`` hash ``dvc.lock`` records for it.

    Computed by DVC's own code (``dvc_data``'s ``build``, as ``dvc add`` and ``dvc repro``
    hash a directory output) in a dry run: nothing is written to any cache. The project's
    ``.dvcignore`` is not applied (it ignores nothing inside ``models/model``).
    """
    import os

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    staging = HashFileDB(MemoryFileSystem(), "memory://register-model-md5")
    path = os.fspath(Path(model_dir).resolve())
    _, _, obj = build(staging, path, LocalFileSystem(), "md5", dry_run=True)
    return str(obj.hash_info.value)


def trivial_baseline(params: Params, prepared_dir: Path, key: str) -> tuple[float, str]:
    """``key`` of the best constant prediction on the test split (``register.min_score:
    auto``), and what that prediction is: the most frequent test label (among constants it
    maximises accuracy, macro and weighted F1), or no entities (``O`` for every word) for
    token classification."""
    import pandas as pd

    from tasks.core.metrics import entity_scores, text_scores

    frame = pd.read_parquet(Path(prepared_dir) / "test.parquet")
    if params.task == "text_classification":
        gold = [str(x) for x in frame["label"]]
        labels = sorted(set(gold))
        majority = max(labels, key=gold.count)
        ids = [labels.index(x) for x in gold]
        scores = text_scores(ids, [labels.index(majority)] * len(ids), labels)
        return float(scores[key]), f"always {majority!r}"
    gold_tags = [[str(t) for t in row] for row in frame["tags"]]
    scores = entity_scores(gold_tags, [["O"] * len(row) for row in gold_tags])
    scores["accuracy"] = scores["token_accuracy"]
    return float(scores.get(key, 0.0)), "no entities"


def decide(
    score: float,
    champion_score: float | None,
    min_improvement: float,
    min_score: float | None,
    baseline: tuple[float, str] | None = None,
) -> tuple[bool, str]:
    """The promotion gate: (promote?, reason in words). A first model must reach
    ``min_score``, or with ``min_score`` None (``auto``) beat ``baseline`` (the trivial
    prediction's score on test, and what it predicts)."""
    if champion_score is None and min_score is None:
        floor, what = baseline if baseline is not None else (0.0, "no baseline")
        if score > floor:
            return True, f"first model: {score:.4f} beats the trivial baseline {floor:.4f} ({what})"
        return False, (
            f"first model: {score:.4f} does not beat the trivial baseline {floor:.4f} ({what}); "
            "register.min_score: auto"
        )
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
    """Register ``model_dir`` (or reuse the version holding the same weights), apply the
    champion/challenger gate, and write the report.

    Returns:
        The content of ``reports/registry.json``.
    """
    import mlflow

    from tasks.core import tracking
    from tasks.core.io import write_json

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
    if not (Path(model_dir) / "config.json").exists():
        raise StageError(f"{model_dir}: no trained model found; run the train stage first")
    data_hash = test_data_hash(Path(prepared_dir))
    weights = model_md5(Path(model_dir))
    name = tracking.registered_model_name(params)  # register.model_name, or auto

    lock = _registry_lock(tracking.tracking_uri(params, state_dir), Path(state_dir), name)
    with tracking.stage_run(params, "register", state_dir) as run, lock:
        client = mlflow.MlflowClient()
        existing = _version_with_weights(client, name, weights)
        champion = _champion(client, name, params.task)
        champion_score, rescored = None, False
        if existing is not None and champion is not None and _same(existing, champion):
            # The champion's own weights: nothing to decide, and metrics.json is its score.
            champion_score, promote = score, False
            decision = "stays champion"
            reason = (
                f"same weights as the champion (model md5 {weights}); "
                f"{score:.4f} on the current test data"
            )
        else:
            if champion is not None:
                tags = champion.tags
                same_data = tags.get("test_data_hash") == data_hash and tags.get("metric") == key
                if same_data:
                    champion_score = float(tags["test_score"])
                else:
                    log.info(
                        "champion v%s was scored on other test data: re-scoring", champion.version
                    )
                    champion_score = rescore(
                        params, name, champion.version, prepared_dir, state_dir
                    )[key]
                    rescored = True
            gate = params.register_.min_score
            promote, reason = decide(
                score,
                champion_score,
                params.register_.min_improvement,
                None if gate == "auto" else gate,
                trivial_baseline(params, Path(prepared_dir), key) if gate == "auto" else None,
            )
            decision = "promoted to champion" if promote else "kept as challenger"
        version_tags = {
            "task": params.task,
            MODEL_MD5_TAG: weights,
            "test_data_hash": data_hash,
            "metric": key,
            "test_score": f"{score:.6f}",
            "decision": decision,
            "reason": reason,
            "decision_run_id": run.info.run_id,
            "champion_before": champion.version if champion else "none",
            "champion_score": "none" if champion_score is None else f"{champion_score:.6f}",
            "champion_rescored": str(rescored).lower(),
        }
        # Two checkouts registering into one server at once race on tag and alias rows.
        retried = tracking.retry_insert_race
        if existing is None:
            # The version and its identity tags come into being in one call: a crash after
            # it leaves a version that the next run finds and reuses.
            version = _log_and_register(params, Path(model_dir), name, version_tags)
            source_run = run.info.run_id
        else:
            version, source_run = existing.version, existing.run_id
            log.info("%s version %s holds these weights already: reusing it", name, version)
            for tag, value in version_tags.items():
                retried(client.set_model_version_tag, name, version, tag, value)
        if decision != "stays champion":
            # challenger first, champion last: a crash in between is repaired by a re-run.
            retried(client.set_registered_model_alias, name, "challenger", version)
            if promote:
                retried(client.set_registered_model_alias, name, "champion", version)
        # What the registry pages show: where the version came from and why it has its alias.
        client.update_model_version(
            name, version, description=version_description(params, run, version_tags)
        )
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=model_description(params))
        mlflow.log_metric(f"test_{key}", score)
        mlflow.set_tags(
            {
                "registry.decision": decision,
                "registry.version": version,
                "registry.reused": str(existing is not None).lower(),
            }
        )
        report = {
            "model_name": name,
            "version": int(version),
            "model_uri": f"models:/{name}/{version}",
            "reused": existing is not None,
            "model_md5": weights,
            "run_id": run.info.run_id,
            "version_run_id": source_run,
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
    from tasks.core.model import load_tokenizer, model_class, resolve_model_source
    from tasks.evaluate import evaluate
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


def _registry_lock(uri: str, state_dir: Path, name: str) -> Any:
    """A file lock held from looking up the weights to setting the aliases, so two register
    runs at once (two checkouts, one store) cannot both create a version of one model. It
    lies beside a local store's files (SQLite database, file store), which every checkout
    using that store shares; for a server store, in this checkout's ``.state``."""
    from filelock import FileLock

    if uri.startswith("sqlite:///"):  # the database's folder
        folder = Path(uri.removeprefix("sqlite:///")).parent
    elif uri.startswith("file:") or "://" not in uri:  # the file store's own folder
        folder = Path(uri.removeprefix("file://").removeprefix("file:"))
    else:
        folder = state_dir
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return FileLock(folder / f".register-{safe}.lock")


def _same(version: Any, other: Any) -> bool:
    return int(version.version) == int(other.version)


def _version_with_weights(client: Any, name: str, weights: str) -> Any | None:
    """The version of ``name`` whose ``model_md5`` tag is ``weights`` (the registry's own tag
    filter, evaluated in SQL by a database store); the champion or challenger if several."""
    found = client.search_model_versions(f"name = '{name}' AND tags.{MODEL_MD5_TAG} = '{weights}'")
    if not found:
        return None
    aliases = _aliases(client, name)
    for alias in ("champion", "challenger"):
        for version in found:
            if int(version.version) == aliases.get(alias):
                return version
    return max(found, key=lambda version: int(version.version))


def _log_and_register(params: Params, model_dir: Path, name: str, tags: dict[str, str]) -> str:
    """Log the model into the active run with signature, input example and explicit
    requirements, then create a version of ``name`` from it with ``tags`` (one call: the
    version never exists without them). Returns the new version."""
    import mlflow
    import torch
    import transformers
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

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
        )
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in (
            ErrorCode.Name(RESOURCE_ALREADY_EXISTS),
            ErrorCode.Name(ALREADY_EXISTS),
        ):
            raise
    run_id = mlflow.active_run().info.run_id
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
    )
    return _keep_first(client, name, str(version.version), tags[MODEL_MD5_TAG])


def model_description(params: Params) -> str:
    """The registered model's description (set once, when it has none)."""
    return (
        f"{params.task.replace('_', ' ')} models fine-tuned by finetune-flow "
        f"(`finetune run`). Alias `champion`: the version `finetune predict` and `serve` "
        "use; `challenger`: the latest version that did not beat it. Each version's "
        "description links its pipeline run, its report and the decision."
    )


def version_description(params: Params, run: Any, tags: dict[str, str]) -> str:
    """A version's description: score, gate decision, and links (MLflow UI routes) to the
    pipeline execution's run (which holds ``report/report.html``) and the register run."""
    experiment, run_id = run.info.experiment_id, run.info.run_id
    parent = run.data.tags.get("mlflow.parentRunId")
    lines = [
        f"Test {tags['metric']} **{float(tags['test_score']):.4f}** on test data "
        f"`{tags['test_data_hash']}`: {tags['decision']} ({tags['reason']}).",
        "",
    ]
    if parent:
        lines.append(
            f"- Pipeline run (every stage, the report `report/report.html`): "
            f"[{parent}](#/experiments/{experiment}/runs/{parent})"
        )
    lines.append(f"- Register run: [{run_id}](#/experiments/{experiment}/runs/{run_id})")
    return "\n".join(lines)


def _keep_first(client: Any, name: str, version: str, weights: str) -> str:
    """The first version of ``name`` holding ``weights``; ``version`` (just created) is
    deleted when an earlier one exists. The HTTP client retries a request whose answer was
    lost (the server died or restarted after creating the version): the retry creates a
    second version of the same weights. The registry lock does not reach another machine's
    register on one server either; both then keep the same, first, version."""
    same = client.search_model_versions(f"name = '{name}' AND tags.{MODEL_MD5_TAG} = '{weights}'")
    first = min((int(v.version) for v in same), default=int(version))
    if first < int(version):
        log.warning("%s version %s duplicates version %s (same weights): deleted", name,
                    version, first)  # fmt: skip
        client.delete_model_version(name, version)
    return str(min(first, int(version)))


class EntityPipeline(PythonModel):
    """Named entities with type, score and character span, from the fine-tuned token
    classifier saved by ``train`` (the ``model`` artifact).

    Word-level, as ``train`` labels and ``evaluate`` scores: a word (the fast tokenizer's
    ``word_ids()``) takes the tag of its first sub-token, and adjacent words of one type form
    an entity (``B-`` starts a new one). ``word`` is ``text[start:end]``: the user's own text,
    with its case, accents and spacing, never the decoded (lowercased) sub-tokens.
    """

    # MLflow's own opt-out of type-hint validation: without it, defining this class (every
    # `import tasks.register`, even --help) prints a coloured "Add type hints" warning.
    _skip_type_hint_validation = True

    def load_context(self, context):
        import transformers

        # Sub-token predictions: entities() groups them into words (see there).
        self.pipeline = transformers.pipeline(
            "token-classification", model=context.artifacts["model"], device="cpu"
        )

    # No type hints here: MLflow would read them as an input schema.
    def predict(self, context, model_input, params=None):
        texts = model_input.iloc[:, 0] if hasattr(model_input, "iloc") else model_input
        return self.entities(self.pipeline, [str(t) for t in texts])

    @staticmethod
    def entities(pipeline: Any, texts: list[str]) -> list[list[dict[str, Any]]]:
        """One list per text of ``{entity, score, word, start, end}``.

        The pipeline's own aggregation is not used: ``simple`` groups sub-tokens by their
        tags (untrained on all but a word's first sub-token, so one word can come out as two
        entities or half of one), and ``first`` guesses word boundaries from token lengths
        (wrong for decomposed accents). Sub-token predictions (``none``) and the tokenizer's
        ``word_ids()`` of the same encoding give the words exactly.
        """
        tokens = pipeline(texts, aggregation_strategy="none", ignore_labels=[])
        encode = pipeline.tokenizer
        return [
            EntityPipeline.spans(text, found, encode(text, truncation=True).word_ids())
            for text, found in zip(texts, tokens, strict=True)
        ]

    @staticmethod
    def spans(
        text: str, tokens: list[dict[str, Any]], word_ids: list[int | None]
    ) -> list[dict[str, Any]]:
        """Entities of ``text`` from per-sub-token predictions (the ``none`` aggregation's
        ``{entity, score, index, start, end}``, ``O`` included) and the ``word_ids()`` of
        that encoding (``None`` on special tokens). Scores are the mean over the entity's
        words of their first sub-token's probability."""
        import unicodedata

        words: dict[int, dict[str, Any]] = {}
        for token in tokens:
            word = word_ids[int(token["index"])]
            if word is None:
                continue
            if word not in words:  # its first sub-token: the word's tag and score
                words[word] = {"tag": token["entity"], "score": float(token["score"])}
                words[word]["start"] = int(token["start"])
            words[word]["end"] = int(token["end"])  # its last sub-token so far
        found: list[dict[str, Any]] = []
        scores: list[float] = []
        last = None  # (word, type) of the previous word when it is in an entity
        for word in sorted(words):
            tag, end = words[word]["tag"], words[word]["end"]
            # The offsets leave out a combining mark that ends a word ("Jose" + U+0301).
            while end < len(text) and unicodedata.combining(text[end]):
                end += 1
            if tag == "O":
                last = None
                continue
            kind = tag[2:] if tag.startswith(("B-", "I-")) else tag
            if tag.startswith("B-") or last != (word - 1, kind):
                found.append({"entity": kind, "start": words[word]["start"]})
                scores = []
            scores.append(words[word]["score"])
            found[-1].update(score=round(sum(scores) / len(scores), 4), end=end)
            last = (word, kind)
        return [
            {
                "entity": e["entity"],
                "score": e["score"],
                "word": text[e["start"] : e["end"]],
                "start": e["start"],
                "end": e["end"],
            }
            for e in found
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
