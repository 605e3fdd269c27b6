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

Nothing is registered unless ``reports/evaluated.json`` shows that ``metrics.json`` was
measured on exactly the weights in ``models/model`` and that they passed the behaviour gate.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import typer

from tasks.core import registry
from tasks.core.cli import stage_command, user_help
from tasks.core.config import DEFAULT_PARAMS, Params, load_params

# Entity models registered before EntityPipeline moved to tasks.core.entity_pipeline were
# pickled by reference to ``tasks.register.EntityPipeline``: loading them looks it up here.
from tasks.core.entity_pipeline import EntityPipeline  # noqa: F401
from tasks.core.environment import PROJECT_ROOT, STATE_DIR
from tasks.core.errors import StageError
from tasks.core.fingerprints import require_evaluation, test_data_hash
from tasks.core.promotion import decide, metric_key, trivial_baseline

log = logging.getLogger(__name__)
MODEL_DIR = PROJECT_ROOT / "models" / "model"
PREPARED_DIR = PROJECT_ROOT / "data" / "prepared"
REPORTS_DIR = PROJECT_ROOT / "reports"

app = typer.Typer(add_completion=False, help=user_help(__doc__))


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
    if not (Path(model_dir) / "config.json").exists():
        raise StageError(f"{model_dir}: no trained model found; run the train stage first")
    # The scores belong to these very weights and they passed the behaviour gate.
    weights = require_evaluation(Path(reports_dir), Path(model_dir))
    metrics = json.loads(metrics_path.read_text())
    key = metric_key(params)
    if key not in metrics:
        raise StageError(
            f"register.metric: {key!r} is not in {metrics_path} ({', '.join(metrics)})"
        )
    score = float(metrics[key])
    data_hash = test_data_hash(Path(prepared_dir))
    name = tracking.registered_model_name(params)  # register.model_name, or auto

    lock = registry.registry_lock(tracking.tracking_uri(params, state_dir), Path(state_dir), name)
    with tracking.stage_run(params, "register", state_dir) as run, lock:
        client = mlflow.MlflowClient()
        existing = registry.version_with_weights(client, name, weights)
        champion = registry.champion(client, name, params.task)
        champion_score, rescored = None, False
        if existing is not None and champion is not None and registry.same(existing, champion):
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
            decision = registry.PROMOTED if promote else "kept as challenger"
        version_tags = {
            "task": params.task,
            registry.MODEL_MD5_TAG: weights,
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
            version = registry.log_and_register(params, Path(model_dir), name, version_tags)
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
                # Another register may have promoted its version against the same champion.
                since = int(champion.version) if champion else 0
                settled = registry.settle_champion(client, name, params.task, since, key, data_hash)
                if settled != int(version):
                    promote, decision = False, "kept as challenger"
                    reason += f"; v{settled}, promoted at the same time, scores higher"
                    retried(client.set_model_version_tag, name, version, "decision", decision)
                    retried(client.set_model_version_tag, name, version, "reason", reason)
                    version_tags |= {"decision": decision, "reason": reason}
        # What the registry pages show: where the version came from and why it has its alias.
        client.update_model_version(
            name, version, description=registry.version_description(params, run, version_tags)
        )
        if not client.get_registered_model(name).description:
            client.update_registered_model(name, description=registry.model_description(params))
        mlflow.log_metric(f"test_{key}", score)
        tracking.log_model_metrics(client, name, version, metrics, Path(prepared_dir), data_hash)
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
            "aliases": registry.aliases(client, name),
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
