"""Registered versions checked before use: ``predict`` and ``serve`` read from the registry
only files that match what ``register`` recorded, and execute nothing from it.

The contract (``register`` writes it, :func:`verified_model` checks it): the version tag
``weights_sha256`` is the sha256 of the manifest of the logged model's folder (the one holding
``MLmodel``): one line ``<sha256>  <relative posix path>\\n`` per file, sorted by path. Every
file counts; a link or other non-regular file is refused. Only ``registered_model_meta`` is
left out (MLflow's ``models:/`` download writes it after registration; nothing reads it).

After the check only data is read: safetensors weights, the fast tokenizer's JSON files,
``MLmodel`` with a safe YAML reader, never ``trust_remote_code``; the entity model runs as this
project's ``EntityPipeline``, never its carried code. Only the two layouts ``register`` logs
are accepted. The tag lives beside the artifacts, so a writer of both could change both:
that is why nothing from the registry ever executes.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.pretrained.model import MODEL_URI, download_version

log = logging.getLogger(__name__)
DIGEST_TAG = "weights_sha256"
REGISTERED_META = "registered_model_meta"  # written by MLflow after registration: not hashed
ENTITY_CODE = "entity_pipeline.py"  # the code file the entity model carries (not executed)
REREGISTER = (
    "register it again to get a verified version of the same weights: `finetune register` "
    "(or `dvc repro --force register`) in the checkout that trained it"
)


@dataclass(frozen=True)
class VerifiedModel:
    """A registered version whose files match its ``weights_sha256`` tag, on local disk."""

    uri: str
    name: str
    version: str
    task: str  # text_classification or token_classification
    folder: Path  # the logged model's folder (holds MLmodel)
    weights_dir: Path
    tokenizer_dir: Path


def manifest_digest(folder: Path) -> str:
    """sha256 of the manifest of ``folder`` (module docstring); StageError for a link or
    other non-regular file."""
    lines = []
    for path in sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix()):
        if (path.is_dir() and not path.is_symlink()) or path == folder / REGISTERED_META:
            continue
        if path.is_symlink() or not path.is_file():
            raise StageError(f"{path}: not a regular file; refused")
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while block := stream.read(1 << 20):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.relative_to(folder).as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_folder(download: Path) -> Path:
    """The folder holding ``MLmodel`` in a download of a logged model."""
    candidates = [download, *sorted(p.parent for p in download.glob("*/MLmodel"))]
    for folder in candidates:
        if (folder / "MLmodel").is_file():
            return folder
    raise StageError(f"{download}: no MLmodel file: not a logged MLflow model")


def verified_model(model_uri: str, tracking_uri: str, state_dir: Path = STATE_DIR) -> VerifiedModel:
    """The version at ``model_uri`` (``models:/NAME@alias`` or ``/VERSION``), downloaded
    (cached under ``state_dir/registry``) and verified. StageError (one line) for another
    URI, no such version, no or a mismatched digest tag, or a layout register does not log.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    match = MODEL_URI.match(model_uri)
    if match is None:
        raise StageError(
            f"{model_uri}: predict and serve take a registered version (models:/NAME@alias or "
            "models:/NAME/VERSION): only those carry the digest they are verified against"
        )
    name = match["name"]
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if match["alias"] is not None:
            version = client.get_model_version_by_alias(name, match["alias"])
        else:
            version = client.get_model_version(name, match["version"])
    except MlflowException as exc:
        raise StageError(
            f"{model_uri}: not found in the registry at {tracking_uri}: {exc.message}"
        ) from None
    label = f"{name} version {version.version}"
    expected = version.tags.get(DIGEST_TAG)
    if not expected:
        raise StageError(
            f"{model_uri}: {label} has no {DIGEST_TAG} tag (registered before predict and serve "
            f"verified models, or not by this project): refused; {REREGISTER}"
        )
    number = str(version.version)
    download = download_version(client, tracking_uri, name, number, model_uri, state_dir, "model")
    folder = model_folder(download)
    found = manifest_digest(folder)
    if found != expected:
        raise StageError(
            f"{model_uri}: {label}: its files do not match the {DIGEST_TAG} recorded at "
            f"registration (recorded {expected[:12]}..., found {found[:12]}...: a file was "
            f"changed, added or removed after registration; the copy checked: {folder}): refused"
        )
    task, weights, tokenizer = layout(folder, label)
    log.info("%s verified (%s %s...)", label, DIGEST_TAG, found[:12])
    return VerifiedModel(model_uri, name, str(version.version), task, folder, weights, tokenizer)


def layout(folder: Path, label: str) -> tuple[str, Path, Path]:
    """(task, weights folder, tokenizer folder) from ``MLmodel``; other layouts refused."""
    import yaml

    flavors = (yaml.safe_load((folder / "MLmodel").read_text(encoding="utf-8")) or {}).get(
        "flavors"
    ) or {}
    transformers = flavors.get("transformers") or {}
    pyfunc = flavors.get("python_function") or {}
    if transformers.get("task") == "text-classification":
        weights = _inside(folder, folder / str(transformers.get("model_binary", "model")), label)
        tokenizer = _inside(folder, folder / "components" / "tokenizer", label)
        return "text_classification", weights, tokenizer
    code = Path(str(pyfunc.get("model_code_path") or "")).name
    artifact = ((pyfunc.get("artifacts") or {}).get("model") or {}).get("path")
    from_code = pyfunc.get("loader_module") == "mlflow.pyfunc.loaders.code_model"
    if from_code and code == ENTITY_CODE and artifact:
        weights = _inside(folder, folder / str(artifact), label)
        return "token_classification", weights, weights
    what = f"flavours {sorted(flavors)}, loader {pyfunc.get('loader_module')}"
    if (folder / "python_model.pkl").exists():
        what = "a pickled python model (python_model.pkl)"
    raise StageError(
        f"{label}: {what}: predict and serve load only the layouts register logs (a "
        "transformers text classifier, the entity pipeline's weights); refused"
    )


def _inside(folder: Path, path: Path, label: str) -> Path:
    if not path.resolve().is_relative_to(folder.resolve()) or not path.is_dir():
        raise StageError(f"{label}: {path} is not a folder of the model; refused")
    return path


def load_verified(verified: VerifiedModel) -> tuple[Any, Any]:
    """The model (eval mode, CPU) and fast tokenizer of ``verified``: data files only."""
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    classes = {
        "text_classification": AutoModelForSequenceClassification,
        "token_classification": AutoModelForTokenClassification,
    }
    label = f"{verified.name} version {verified.version}"
    try:
        tokenizer = AutoTokenizer.from_pretrained(verified.tokenizer_dir, trust_remote_code=False)
        model = classes[verified.task].from_pretrained(
            verified.weights_dir, use_safetensors=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise StageError(f"{label}: cannot load its weights or tokenizer: {exc}") from None
    if not tokenizer.is_fast:
        raise StageError(f"{label}: the tokenizer is not a fast tokenizer (tokenizer.json)")
    return model.eval(), tokenizer


def stored_digest(model_id: str) -> str:
    """The ``weights_sha256`` of a just-logged model ``m-...``, from a download of its own
    artifact location (as :func:`verified_model` computes it)."""
    import tempfile

    import mlflow

    location = mlflow.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="finetune-digest-") as tmp:
        mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp)
        return manifest_digest(model_folder(Path(tmp)))
