"""Issue 31 item 3: predict and serve use only verified versions and run nothing from the
registry (tasks/core/registration/verified.py): a real SQLite store, tiny models registered as the
register
stage logs them, artifacts altered in the store's own folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import register_tiny
from transformers import (
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
)
from typer.testing import CliRunner

from tasks.commands.main import app
from tasks.commands.predict import predict
from tasks.commands.serving import served_model
from tasks.core.data.labels import iob2_tags
from tasks.core.entity_pipeline import EntityPipeline
from tasks.core.errors import StageError
from tasks.core.registration.verified import DIGEST_TAG, stored_digest

TEXTS = ["alice went to paris", "a great film"]


def _save(tiny_model_dir: Path, target: Path, task: str) -> Path:
    """A tiny model with a head for ``task`` and its tokenizer, saved in ``target``."""
    labels = iob2_tags(["PER"]) if task == "token_classification" else ["negative", "positive"]
    head = (
        AutoModelForTokenClassification
        if task == "token_classification"
        else AutoModelForSequenceClassification
    )
    model = head.from_pretrained(
        tiny_model_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(target)
    return target


def _stored(uri: str) -> Path:
    """The store's own folder of a registered version's files (a local artifact store)."""
    name, version = uri.removeprefix("models:/").split("/")
    location = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    return Path(location.removeprefix("file://"))


def _cli_predict(uri: str, sqlite_store: str, tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text(f"tracking:\n  uri: {sqlite_store}\n", encoding="utf-8")
    return CliRunner().invoke(app, ["predict", "--params", str(params), "--model-uri", uri, "x"])


def test_good_versions_predict_and_serve_the_same(tiny_model_dir, tmp_path, sqlite_store):
    for task in ("text_classification", "token_classification"):
        model_dir = _save(tiny_model_dir, tmp_path / task, task)
        uri = register_tiny(model_dir, f"good-{task[:4]}", task)
        assert mlflow.MlflowClient().get_model_version(*uri[8:].split("/")).tags[DIGEST_TAG]
        # MLflow's own models:/ download of a local store writes a file into the store's folder.
        mlflow.artifacts.download_artifacts(artifact_uri=uri)
        assert (_stored(uri) / "registered_model_meta").is_file()
        records = predict(uri, TEXTS)
        served = served_model(uri, sqlite_store).predict(TEXTS)
        if task == "text_classification":
            assert [r["label"] for r in records] == served["label"].tolist()
            assert all(r["label"] in ("negative", "positive") for r in records)
            # The label and score of the transformers pipeline, from the same weights.
            model = AutoModelForSequenceClassification.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
            with torch.no_grad():
                logits = model(**tokenizer(TEXTS[0], return_tensors="pt")).logits
            assert records[0]["score"] == pytest.approx(torch.softmax(logits, -1).max().item())
        else:
            assert served == [r["entities"] for r in records]


def test_a_weights_file_altered_after_registration_is_refused(
    tiny_model_dir, tmp_path, sqlite_store
):
    model_dir = _save(tiny_model_dir, tmp_path / "text", "text_classification")
    uri = register_tiny(model_dir, "altered-weights", "text_classification")
    weights = _stored(uri) / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    for attempt in (lambda: predict(uri, TEXTS), lambda: served_model(uri, sqlite_store)):
        with pytest.raises(StageError, match=r"altered-weights version 1: its files do not match"):
            attempt()
    result = _cli_predict(uri, sqlite_store, tmp_path)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"predict: error: {uri}: altered-weights version 1" in result.output


def test_altered_carried_code_is_refused_and_never_runs(tiny_model_dir, tmp_path, sqlite_store):
    model_dir = _save(tiny_model_dir, tmp_path / "ner", "token_classification")
    uri = register_tiny(model_dir, "altered-code", "token_classification")
    marker = tmp_path / "the-registry-code-ran"
    code = _stored(uri) / "entity_pipeline.py"
    code.write_text(code.read_text() + f"open({str(marker)!r}, 'w').write('ran')\n")
    for attempt in (lambda: predict(uri, TEXTS), lambda: served_model(uri, sqlite_store)):
        with pytest.raises(StageError, match="altered-code version 1: its files do not match"):
            attempt()
    assert not marker.exists()


def test_code_carried_by_a_version_is_never_what_runs(tiny_model_dir, tmp_path, sqlite_store):
    """A version whose digest matches its files (registered with code that writes a marker)
    still runs this project's EntityPipeline: the carried code is never executed."""
    model_dir = _save(tiny_model_dir, tmp_path / "ner", "token_classification")
    marker = tmp_path / "the-registry-code-ran"
    hostile = tmp_path / "entity_pipeline.py"
    source = Path(EntityPipeline.__module__.replace(".", "/") + ".py").read_text()
    hostile.write_text(source + f"open({str(marker)!r}, 'w').write('ran')\n")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(hostile), artifacts={"model": str(model_dir)}
        )
    marker.unlink()  # MLflow ran it once itself, at logging
    client = mlflow.MlflowClient()
    client.create_registered_model("carried-code")
    tags = {DIGEST_TAG: stored_digest(info.model_id)}
    client.create_model_version("carried-code", info.model_uri, tags=tags, model_id=info.model_id)
    records = predict("models:/carried-code/1", TEXTS)
    served = served_model("models:/carried-code/1", sqlite_store).predict(TEXTS)
    assert served == [r["entities"] for r in records]
    assert not marker.exists()


def test_a_pickled_model_is_refused_by_name(tiny_model_dir, tmp_path, sqlite_store):
    model_dir = _save(tiny_model_dir, tmp_path / "ner", "token_classification")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model", python_model=EntityPipeline(), artifacts={"model": str(model_dir)}
        )
    client = mlflow.MlflowClient()
    client.create_registered_model("pickled")
    tags = {DIGEST_TAG: stored_digest(info.model_id)}
    client.create_model_version("pickled", info.model_uri, tags=tags, model_id=info.model_id)
    for attempt in (lambda: predict("models:/pickled/1", TEXTS),
                    lambda: served_model("models:/pickled/1", sqlite_store)):  # fmt: skip
        with pytest.raises(StageError, match=r"pickled version 1: a pickled python model"):
            attempt()


def test_a_version_without_the_digest_is_refused_with_how_to_reregister(
    tiny_model_dir, tmp_path, sqlite_store
):
    model_dir = _save(tiny_model_dir, tmp_path / "text", "text_classification")
    uri = register_tiny(model_dir, "untagged", "text_classification")
    mlflow.MlflowClient().delete_model_version_tag("untagged", "1", DIGEST_TAG)
    mlflow.MlflowClient().set_registered_model_alias("untagged", "champion", "1")
    with pytest.raises(StageError, match=rf"untagged version 1 has no {DIGEST_TAG} tag"):
        predict("models:/untagged@champion", TEXTS)
    result = _cli_predict(uri, sqlite_store, tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "`finetune register`" in result.output
    with pytest.raises(StageError, match="predict and serve take a registered version"):
        predict(f"runs:/{'0' * 32}/model", TEXTS)
    shutil.rmtree(tmp_path / "text")
