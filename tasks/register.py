"""Stage ``register``: log the trained model to MLflow, register it, and gate the champion.

Idempotent: versions carry ``model_md5`` (``dvc.lock``'s hash of ``models/model``),
``test_data_hash`` and ``weights_sha256``; one with the current weights is reused. It gets
``challenger``, and ``champion`` only if it beats the champion by
``register.min_improvement`` on the same test data (or, with none, reaches
``register.min_score``). Only weights that ``reports/evaluated.json`` shows scored and past
the behaviour gate; writes ``reports/registry.json`` atomically, last.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from tasks.core.cli import ParamsPath, stage_command, stage_params, user_help
from tasks.core.config import DEFAULT_PARAMS, Params
from tasks.core.data.tokenizing import tokenize

# Entity models registered before EntityPipeline moved to tasks.core.entity_pipeline were
# pickled by reference to ``tasks.register.EntityPipeline``: loading them looks it up here.
from tasks.core.entity_pipeline import EntityPipeline  # noqa: F401
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.evaluation.scoring import evaluate
from tasks.core.io import write_json
from tasks.core.paths import MODEL_DIR, PREPARED_DIR, REPORTS_DIR
from tasks.core.pretrained.model import load_tokenizer, model_class, resolve_model_source
from tasks.core.registration import registry
from tasks.core.registration.fingerprints import require_evaluation, test_data_hash
from tasks.core.registration.promotion import decide, metric_key, trivial_baseline
from tasks.core.registration.verified import DIGEST_TAG

log = logging.getLogger(__name__)

app = typer.Typer(add_completion=False, help=user_help(__doc__))


@dataclass
class Scores:
    """What register reads before touching the registry: the weights' identity and score."""

    weights: str  # model_md5 of model_dir
    metrics: dict[str, Any]
    key: str  # the gate's metric
    score: float
    data_hash: str  # md5 of the test split


@dataclass
class Decision:
    """The gate's outcome for the version of the current weights."""

    promote: bool
    decision: str
    reason: str
    champion_score: float | None = None
    rescored: bool = False


def register(
    params: Params,
    model_dir: Path = MODEL_DIR,
    prepared_dir: Path = PREPARED_DIR,
    reports_dir: Path = REPORTS_DIR,
    state_dir: Path = STATE_DIR,
) -> dict[str, Any]:
    """Register (or reuse) ``model_dir``'s version, apply the gate; the registry.json content."""
    import mlflow

    from tasks.core import tracking

    scores = read_scores(params, Path(model_dir), Path(prepared_dir), Path(reports_dir))
    name = tracking.registered_model_name(params)  # register.model_name, or auto
    lock = registry.registry_lock(tracking.tracking_uri(params, state_dir), Path(state_dir), name)
    with tracking.stage_run(params, "register", state_dir) as run, lock:
        client = mlflow.MlflowClient()
        existing = registry.version_with_weights(client, name, scores.weights)
        champion = registry.champion(client, name, params.task)
        gate = decide_gate(params, client, name, existing, champion, scores, prepared_dir,
                           state_dir)  # fmt: skip
        tags = version_tags(params, scores, gate, champion, run.info.run_id)
        if existing is None:
            # Version and identity tags in one call: after a crash the next run reuses it.
            version = registry.log_and_register(params, Path(model_dir), name, tags)
            source_run = run.info.run_id
        else:
            version, source_run = existing.version, existing.run_id
            log.info("%s version %s holds these weights already: reusing it", name, version)
            for tag, value in tags.items():
                tracking.retry_insert_race(client.set_model_version_tag, name, version, tag, value)
        set_aliases(params, client, name, version, champion, scores, gate, tags)
        reused = existing is not None
        describe(params, client, run, name, version, scores, gate, reused, tags, Path(prepared_dir))
        report = write_report(
            Path(reports_dir), name, version, existing, source_run, run, scores, champion, gate
        )
        report["aliases"] = registry.aliases(client, name)
        write_json(Path(reports_dir) / "registry.json", report)
        mlflow.log_artifact(str(Path(reports_dir) / "registry.json"), artifact_path="reports")
    log.info("%s version %s %s: %s", name, version, gate.decision, gate.reason)
    return report


def read_scores(params: Params, model_dir: Path, prepared_dir: Path, reports_dir: Path) -> Scores:
    """The weights' identity and score; refuses other weights' or a failed behaviour gate."""
    metrics_path = reports_dir / "metrics.json"
    if not metrics_path.exists():
        raise StageError(f"{metrics_path}: not found; run the evaluate stage first")
    if not (model_dir / "config.json").exists():
        raise StageError(f"{model_dir}: no trained model found; run the train stage first")
    weights = require_evaluation(reports_dir, model_dir)
    metrics = json.loads(metrics_path.read_text())
    key = metric_key(params)
    if key not in metrics:
        raise StageError(
            f"register.metric: {key!r} is not in {metrics_path} ({', '.join(metrics)})"
        )
    return Scores(weights, metrics, key, float(metrics[key]), test_data_hash(prepared_dir))


def decide_gate(
    params: Params,
    client: Any,
    name: str,
    existing: Any | None,
    champion: Any | None,
    scores: Scores,
    prepared_dir: Path,
    state_dir: Path,
) -> Decision:
    """The gate's decision, re-scoring a champion scored on other test data."""
    score, key = scores.score, scores.key
    if existing is not None and champion is not None and registry.same(existing, champion):
        # The champion's own weights: nothing to decide, and metrics.json is its score.
        reason = (
            f"same weights as the champion (model md5 {scores.weights}); "
            f"{score:.4f} on the current test data"
        )
        return Decision(False, "stays champion", reason, score)
    if champion is not None and champion.tags.get(registry.MODEL_MD5_TAG) == scores.weights:
        # Its weights without weights_sha256: this verified version replaces it.
        reason = (
            f"same weights as champion v{champion.version}, which has no "
            f"{DIGEST_TAG} (registered before verification): replaces it"
        )
        return Decision(True, registry.PROMOTED, reason, score)
    champion_score, rescored = None, False
    if champion is not None:
        tags = champion.tags
        if tags.get("test_data_hash") == scores.data_hash and tags.get("metric") == key:
            champion_score = float(tags["test_score"])
        else:
            log.info("champion v%s was scored on other test data: re-scoring", champion.version)
            champion_score = rescore(params, name, champion.version, prepared_dir, state_dir)[key]
            rescored = True
    gate = params.register_.min_score
    promote, reason = decide(
        score,
        champion_score,
        params.register_.min_improvement,
        None if gate == "auto" else gate,
        trivial_baseline(params, Path(prepared_dir), key) if gate == "auto" else None,
    )
    decision = registry.PROMOTED if promote else "kept as challenger"
    return Decision(promote, decision, reason, champion_score, rescored)


def version_tags(
    params: Params, scores: Scores, gate: Decision, champion: Any | None, run_id: str
) -> dict[str, str]:
    """The tags every version carries: identity, score, and the gate's decision."""
    return {
        "task": params.task,
        registry.MODEL_MD5_TAG: scores.weights,
        "test_data_hash": scores.data_hash,
        "metric": scores.key,
        "test_score": f"{scores.score:.6f}",
        "decision": gate.decision,
        "reason": gate.reason,
        "decision_run_id": run_id,
        "champion_before": champion.version if champion else "none",
        "champion_score": "none" if gate.champion_score is None else f"{gate.champion_score:.6f}",
        "champion_rescored": str(gate.rescored).lower(),
    }


def set_aliases(
    params: Params,
    client: Any,
    name: str,
    version: str,
    champion: Any | None,
    scores: Scores,
    gate: Decision,
    tags: dict[str, str],
) -> None:
    """``challenger`` first, ``champion`` last; then settle against a concurrent promotion."""
    from tasks.core import tracking

    if gate.decision == "stays champion":
        return
    # Two checkouts registering into one server at once race on tag and alias rows.
    retried = tracking.retry_insert_race
    retried(client.set_registered_model_alias, name, "challenger", version)
    if not gate.promote:
        return
    retried(client.set_registered_model_alias, name, "champion", version)
    since = int(champion.version) if champion else 0
    settled = registry.settle_champion(client, name, params.task, since, scores.key,
                                       scores.data_hash)  # fmt: skip
    if settled != int(version):
        gate.promote, gate.decision = False, "kept as challenger"
        gate.reason += f"; v{settled}, promoted at the same time, scores higher"
        retried(client.set_model_version_tag, name, version, "decision", gate.decision)
        retried(client.set_model_version_tag, name, version, "reason", gate.reason)
        tags |= {"decision": gate.decision, "reason": gate.reason}


def describe(
    params: Params,
    client: Any,
    run: Any,
    name: str,
    version: str,
    scores: Scores,
    gate: Decision,
    reused: bool,
    tags: dict[str, str],
    prepared_dir: Path,
) -> None:
    """The registry pages' descriptions, the test scores as model metrics, the run's tags."""
    import mlflow

    from tasks.core import tracking

    client.update_model_version(
        name, version, description=registry.version_description(params, run, tags)
    )
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=registry.model_description(params))
    mlflow.log_metric(f"test_{scores.key}", scores.score)
    tracking.log_model_metrics(client, name, version, scores.metrics, prepared_dir,
                               scores.data_hash)  # fmt: skip
    mlflow.set_tags(
        {
            "registry.decision": gate.decision,
            "registry.version": version,
            "registry.reused": str(reused).lower(),
        }
    )


def write_report(
    reports_dir: Path,
    name: str,
    version: str,
    existing: Any | None,
    source_run: str,
    run: Any,
    scores: Scores,
    champion: Any | None,
    gate: Decision,
) -> dict[str, Any]:
    """The content of ``reports/registry.json`` (the aliases are added by the caller)."""
    before = None
    if champion is not None:
        before = {
            "version": int(champion.version),
            "score": gate.champion_score,
            "rescored": gate.rescored,
        }
    return {
        "model_name": name,
        "version": int(version),
        "model_uri": f"models:/{name}/{version}",
        "reused": existing is not None,
        "model_md5": scores.weights,
        "run_id": run.info.run_id,
        "version_run_id": source_run,
        "metric": scores.key,
        "score": scores.score,
        "test_data_hash": scores.data_hash,
        "champion_before": before,
        "promoted": gate.promote,
        "decision": gate.decision,
        "reason": gate.reason,
    }


def rescore(
    params: Params, name: str, version: str, prepared_dir: Path, state_dir: Path
) -> dict[str, Any]:
    """Score a registered version on the current test split with the stages' own code."""
    source = resolve_model_source(f"models:/{name}/{version}", params.tracking.uri, state_dir)
    with tempfile.TemporaryDirectory(dir=state_dir, prefix=".rescore-") as tmp:
        work = Path(tmp)
        model_class(params.task).from_pretrained(source.model_dir).save_pretrained(work / "model")
        load_tokenizer(source).save_pretrained(work / "model")
        update = {"model": params.model.model_copy(update={"name_or_path": str(work / "model")})}
        scoring = params.model_copy(update=update)
        tokenize(scoring, prepared_dir, work / "tokenized", work / "tokenize.json", state_dir)
        return evaluate(scoring, work / "tokenized", work / "model", work / "reports")


@app.command()
@stage_command("register")
def main(
    params_path: ParamsPath = DEFAULT_PARAMS,
    model_dir: Annotated[Path, typer.Option(help="the trained model")] = MODEL_DIR,
    prepared_dir: Annotated[
        Path, typer.Option(help="the prepared splits (test is hashed)")
    ] = PREPARED_DIR,
    reports_dir: Annotated[
        Path, typer.Option(help="metrics.json in, registry.json out")
    ] = REPORTS_DIR,
) -> None:
    """Register models/model and decide whether it becomes the champion."""
    register(stage_params(params_path, "register"), model_dir, prepared_dir, reports_dir)


if __name__ == "__main__":
    app()
