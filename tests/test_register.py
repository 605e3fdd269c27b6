"""The register stage: MLflow logging, the champion/challenger gate, lineage and serving."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import ROOT, project_env, run, tiny_params, write_toy_prepared

from tasks.evaluate import evaluate
from tasks.register import decide, register
from tasks.tokenize import tokenize
from tasks.train import train


@dataclass
class Trained:
    """A tiny model trained and evaluated by the real stages, with its own registry."""

    params: object
    root: Path

    @property
    def uri(self) -> str:
        return self.params.tracking.uri

    def dirs(self) -> tuple[Path, Path, Path, Path]:
        r = self.root
        return r / "model", r / "prepared", r / "reports", r / "state"

    def set_score(self, score: float) -> None:
        """Pretend evaluate measured ``score`` (the gate reads metrics.json)."""
        path = self.root / "reports" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["f1_macro" if self.params.task == "text_classification" else "f1_micro"] = score
        path.write_text(json.dumps(metrics))

    def register(self):
        return register(self.params, *self.dirs())

    def client(self):
        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def ensure_champion(self) -> None:
        """Register once when an earlier test (run alone, or deselected) has not."""
        name = self.params.register_.model_name
        if not self.client().search_model_versions(f"name='{name}'"):
            self.register()
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)


def _train(root: Path, task: str, model_dir: Path, name: str) -> Trained:
    params = tiny_params(
        task,
        model_dir,
        train={"epochs": 3},
        tracking={"uri": f"sqlite:///{root / 'mlflow.db'}", "experiment": "tests"},
        register={"model_name": name, "min_score": 0.0},
    )
    write_toy_prepared(root / "prepared", task)
    state = root / "state"
    tokenize(params, root / "prepared", root / "tokenized", root / "tokenize.json", state)
    train(params, root / "tokenized", root / "model", root / "reports", state)
    evaluate(params, root / "tokenized", root / "model", root / "reports")
    return Trained(params, root)


@pytest.fixture(scope="module")
def text_model(tmp_path_factory, tiny_model_dir) -> Trained:
    return _train(
        tmp_path_factory.mktemp("text"), "text_classification", tiny_model_dir, "toy-sentiment"
    )


@pytest.fixture(scope="module")
def token_model(tmp_path_factory, tiny_model_dir) -> Trained:
    return _train(
        tmp_path_factory.mktemp("token"), "token_classification", tiny_model_dir, "toy-ner"
    )


@pytest.mark.parametrize(
    ("score", "champion", "promote", "words"),
    [
        (0.70, None, True, "first model: 0.7000 reaches min_score 0.5"),
        (0.40, None, False, "first model: 0.4000 is below min_score 0.5"),
        (0.80, 0.70, True, "beats the champion by +0.1000"),
        (0.70, 0.70, False, "does not beat the champion"),
        (0.60, 0.70, False, "does not beat the champion"),
        (0.701, 0.70, False, "min_improvement 0.002"),  # better, but by too little
    ],
)
def test_gate(score, champion, promote, words):
    promoted, reason = decide(score, champion, min_improvement=0.002, min_score=0.5)
    assert promoted is promote
    assert words in reason


def test_first_better_worse_and_equal_versions(text_model):
    client = text_model.client()
    first = text_model.register()
    assert (first["version"], first["promoted"]) == (1, True)
    assert first["aliases"] == {"champion": 1, "challenger": 1}

    text_model.set_score(first["score"] + 0.1)
    better = text_model.register()
    assert better["promoted"] and better["champion_before"]["version"] == 1
    assert better["aliases"] == {"champion": 2, "challenger": 2}

    text_model.set_score(first["score"])
    worse = text_model.register()
    assert not worse["promoted"]
    assert "does not beat the champion" in worse["reason"]
    assert worse["aliases"] == {"champion": 2, "challenger": 3}

    text_model.set_score(better["score"])
    equal = text_model.register()
    assert not equal["promoted"]
    assert equal["aliases"] == {"champion": 2, "challenger": 4}

    # Every version is kept, with its decision, scores and data hash as tags.
    versions = client.search_model_versions("name='toy-sentiment'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
    third = client.get_model_version("toy-sentiment", "3")
    assert third.tags["decision"] == "kept as challenger"
    assert float(third.tags["champion_score"]) == pytest.approx(better["score"], abs=1e-6)
    assert third.tags["test_data_hash"] == first["test_data_hash"]
    saved = json.loads((text_model.root / "reports" / "registry.json").read_text())
    assert saved == equal


def test_champion_is_rescored_on_new_test_data(text_model):
    text_model.ensure_champion()
    test_path = text_model.root / "prepared" / "test.parquet"
    original = test_path.read_bytes()
    try:
        pd.read_parquet(test_path).head(30).to_parquet(test_path)  # a new test data version
        report = text_model.register()
    finally:
        test_path.write_bytes(original)
    before = report["champion_before"]
    assert before["rescored"] is True
    # The stored score was the doctored one; the re-score is the real one on the new split.
    champion = text_model.client().get_model_version("toy-sentiment", str(before["version"]))
    assert before["score"] != pytest.approx(float(champion.tags["test_score"]))
    assert 0.0 <= before["score"] <= 1.0
    assert report["test_data_hash"] != champion.tags["test_data_hash"]


def test_champions_load_as_pyfunc_and_predict(text_model, token_model):
    text_model.ensure_champion()
    sentiment = mlflow.pyfunc.load_model("models:/toy-sentiment@champion")
    predictions = sentiment.predict(["a great film", "an awful plot"])
    assert set(predictions["label"]) <= {"positive", "negative"}
    assert predictions["score"].between(0, 1).all()

    token_model.ensure_champion()
    ner = mlflow.pyfunc.load_model("models:/toy-ner@champion")
    texts = ["alice smith went to paris", "the movie was long"]
    entities = ner.predict(texts)
    assert len(entities) == 2
    found = {(e["entity"], e["word"]) for e in entities[0]}
    assert ("PER", "alice smith") in found and ("LOC", "paris") in found
    for entity in entities[0]:
        assert texts[0][entity["start"] : entity["end"]] == entity["word"]
    assert entities[1] == []  # no entities: an empty list, not an error


def test_version_run_has_lineage(token_model):
    report = token_model.register()
    client = token_model.client()
    version = client.get_model_version("toy-ner", str(report["version"]))
    run = client.get_run(version.run_id)
    tags, params = run.data.tags, run.data.params
    assert len(tags["git.commit"]) == 40 and tags["git.dirty"] in ("true", "false")
    assert tags["pipeline.stage"] == "register" and tags["device"].startswith(("cpu", "cuda"))
    assert tags["torch.version"] and tags["transformers.version"]
    assert params["task"] == "token_classification"
    assert params["train.learning_rate"] == "0.01"
    parent = client.get_run(tags["mlflow.parentRunId"])
    assert parent.data.tags["pipeline.stage"] == "pipeline"


def test_predict_cli_prints_labels_and_entity_spans(text_model, token_model):
    outputs = {}
    for trained in (text_model, token_model):
        trained.ensure_champion()
        params_file = trained.root / "params.yaml"
        params_file.write_text(
            yaml.safe_dump(trained.params.model_dump(mode="json", by_alias=True))
        )
        texts = trained.root / "texts.txt"
        texts.write_text("alice smith liked paris\n\nthe film was great\n")
        done = run(
            [sys.executable, "-m", "tasks.predict", "--params", str(params_file), "--json",
             "--file", str(texts), "a dull movie"],
            ROOT,
        )  # fmt: skip
        outputs[trained.params.task] = [json.loads(line) for line in done.stdout.splitlines()]
    texts = [r["text"] for r in outputs["text_classification"]]
    assert texts == ["a dull movie", "alice smith liked paris", "the film was great"]
    assert all(r["label"] in ("positive", "negative") for r in outputs["text_classification"])
    first = outputs["token_classification"][1]
    assert {"entity": "PER", "word": "alice smith"} in [
        {k: e[k] for k in ("entity", "word")} for e in first["entities"]
    ]
    missing = run(
        [sys.executable, "-m", "tasks.predict", "--params", str(params_file)], ROOT, check=False
    )
    assert missing.returncode == 1
    assert "predict: error: no text given" in missing.stderr


# --- a real MLflow server and a served model ---------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float = 2):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def _start(command: list[str], health: str, log: Path, env: dict, timeout: float = 120):
    with log.open("w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(health, timeout=2)
            return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.5)
    process.kill()
    raise AssertionError(f"{command[:3]} did not come up:\n{log.read_text()[-3000:]}")


def _stop(process) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def test_server_lists_aliases_and_served_model_answers(text_model, tmp_path):
    text_model.ensure_champion()
    env = {**project_env(), "MLFLOW_TRACKING_URI": text_model.uri}
    port = _free_port()
    server = _start(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", text_model.uri,
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        f"http://127.0.0.1:{port}/health", tmp_path / "server.log", env,
    )  # fmt: skip
    try:
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow"
        model = _get(f"{api}/registered-models/get?name=toy-sentiment")["registered_model"]
        aliases = {a["alias"] for a in model["aliases"]}
        assert {"champion", "challenger"} <= aliases
    finally:
        _stop(server)

    port = _free_port()
    served = _start(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/toy-sentiment@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", tmp_path / "serve.log", env, timeout=180,
    )  # fmt: skip
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations",
            data=json.dumps({"inputs": ["a great film", "a dull plot"]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        predictions = answer["predictions"]
        assert len(predictions) == 2
        assert {p["label"] for p in predictions} <= {"positive", "negative"}
    finally:
        _stop(served)
    assert ROOT.exists()
