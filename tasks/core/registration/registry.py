"""The MLflow model registry for the register stage: champion and aliases, the version
holding given weights, the register lock, logging and registering a model with its tags.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks.core import entity_pipeline
from tasks.core.config import Params
from tasks.core.entity_pipeline import EntityPipeline
from tasks.core.errors import StageError
from tasks.core.registration.verified import DIGEST_TAG, stored_digest

log = logging.getLogger(__name__)
MODEL_MD5_TAG = "model_md5"  # DVC's md5 of the model directory: the identity of the weights
INPUT_EXAMPLES = {
    "text_classification": ["A moving, beautifully acted film.", "Dull and far too long."],
    "token_classification": ["Alice flew from Paris to Berlin with Lufthansa."],
}


def champion(client: Any, name: str, task: str) -> Any | None:
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


PROMOTED = "promoted to champion"


def settle_champion(client: Any, name: str, task: str, since: int, metric: str, data: str) -> int:
    """Compare-and-set of ``champion`` after a promotion: set it to the best of the versions
    newer than ``since`` promoted on the same ``metric`` and test ``data`` (up to 3 tries), so
    of two concurrent register runs the better ends as champion. Returns its version.
    Hand-written: MLflow's alias API has no compare-and-set, a server store no lock."""
    query = f"name = '{name}' AND tags.decision = '{PROMOTED}'"
    for _ in range(3):
        current = champion(client, name, task)
        found = [
            v
            for v in [*client.search_model_versions(query), *([current] if current else [])]
            if int(v.version) > since
            and v.tags.get("metric") == metric
            and v.tags.get("test_data_hash") == data
        ]
        if not found:
            return int(current.version) if current else since
        best = max(found, key=lambda v: (float(v.tags["test_score"]), -int(v.version)))
        if current is not None and int(current.version) == int(best.version):
            return int(best.version)
        log.info("%s: v%s scores higher than the champion set at the same time", name, best.version)
        client.set_registered_model_alias(name, "champion", best.version)
    return int(best.version)


def registry_lock(uri: str, state_dir: Path, name: str) -> Any:
    """The file lock serialising register runs on one store (beside a local store's files,
    shared by its checkouts; for a server store, in ``state_dir``)."""
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


def same(version: Any, other: Any) -> bool:
    return int(version.version) == int(other.version)


def verified_versions(client: Any, name: str, weights: str) -> list[Any]:
    """The versions of ``name`` whose ``model_md5`` tag is ``weights`` and that carry a
    ``weights_sha256`` tag (unverified versions are never reused)."""
    found = client.search_model_versions(f"name = '{name}' AND tags.{MODEL_MD5_TAG} = '{weights}'")
    return [version for version in found if version.tags.get(DIGEST_TAG)]


def version_with_weights(client: Any, name: str, weights: str) -> Any | None:
    """The verified version of ``name`` holding ``weights``; champion or challenger first."""
    found = verified_versions(client, name, weights)
    if not found:
        return None
    current = aliases(client, name)
    for alias in ("champion", "challenger"):
        for version in found:
            if int(version.version) == current.get(alias):
                return version
    return max(found, key=lambda version: int(version.version))


def log_and_register(params: Params, model_dir: Path, name: str, tags: dict[str, str]) -> str:
    """Log the model into the active run, then create a version of ``name`` with ``tags``
    and ``weights_sha256`` in one call (never a version without them). Returns the version."""
    import mlflow
    import torch
    import transformers
    from mlflow.models import infer_signature

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
        # MLflow's transformers pyfunc returns only a string of entity types for this task
        pipeline = transformers.pipeline(
            "token-classification",
            model=str(model_dir),
            aggregation_strategy="simple",
            device="cpu",
        )
        info = mlflow.pyfunc.log_model(  # from code: the file travels with the model
            name="model",
            python_model=entity_pipeline.__file__,
            artifacts={"model": str(model_dir)},
            signature=infer_signature(example, EntityPipeline.entities(pipeline, example)),
            input_example=example,
            pip_requirements=requirements,
        )
    client = mlflow.MlflowClient()
    _ensure_registered(client, name)
    run_id = mlflow.active_run().info.run_id
    tags = {**tags, DIGEST_TAG: stored_digest(info.model_id)}
    version = client.create_model_version(
        name, source=info.model_uri, run_id=run_id, tags=tags, model_id=info.model_id
    )
    return _keep_first(client, name, str(version.version), tags[MODEL_MD5_TAG])


def _ensure_registered(client: Any, name: str) -> None:
    """Create the registered model ``name`` unless it exists (also concurrently)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in (
            ErrorCode.Name(RESOURCE_ALREADY_EXISTS),
            ErrorCode.Name(ALREADY_EXISTS),
        ):
            raise


def aliases(client: Any, name: str) -> dict[str, int]:
    from mlflow.exceptions import MlflowException

    found = {}
    for alias in ("champion", "challenger"):
        try:
            found[alias] = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            continue
    return found


def model_description(params: Params) -> str:
    """The registered model's description (set once, when it has none)."""
    return (
        f"{params.task.replace('_', ' ')} models fine-tuned by finetune-flow "
        f"(`finetune run`). Alias `champion`: the version `finetune predict` and `serve` "
        "use; `challenger`: the latest version that did not beat it. Each version's "
        "description links its pipeline run, its report and the decision."
    )


def version_description(params: Params, run: Any, tags: dict[str, str]) -> str:
    """A version's description: score, gate decision, links to the pipeline and register runs."""
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
    deleted if an earlier one exists (a retried request, or another machine's register)."""
    same = verified_versions(client, name, weights)
    first = min((int(v.version) for v in same), default=int(version))
    if first < int(version):
        log.warning("%s version %s duplicates version %s (same weights): deleted", name,
                    version, first)  # fmt: skip
        client.delete_model_version(name, version)
    return str(min(first, int(version)))
